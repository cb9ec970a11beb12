"""Research task: rank documents against a query with BM25."""

from __future__ import annotations

import math
import re
from collections import Counter
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from kitty_tasks.runtime.application import app
from kitty_tasks.runtime.task import RETRY_ANY
from kitty_tasks.tasks.corpus import DEFAULT_CORPUS, Document

__all__ = ["Document", "ResearchRequest", "rank_documents", "research_paper"]

_WORD = re.compile(r"[a-z0-9]+")
#: BM25's usual constants: term-frequency saturation and length normalisation.
K1 = 1.5
B = 0.75


class ResearchRequest(BaseModel):
    """Input of ``research_paper``; without documents the bundled corpus is searched."""

    model_config = ConfigDict(extra="forbid")

    query: str = Field(min_length=1, max_length=1000)
    max_results: int = Field(10, ge=1, le=100)
    documents: list[Document] | None = None


def tokenize(text: str) -> list[str]:
    """Lower-case alphanumeric words."""
    return _WORD.findall(text.lower())


def rank_documents(query: str, documents: list[Document], limit: int) -> list[dict[str, Any]]:
    """Score every document by BM25 against ``query``; best first, zero scores left out."""
    terms = tokenize(query)
    bodies = [tokenize(f"{d.title} {d.text}") for d in documents]
    if not terms or not bodies:
        return []
    average_length = sum(len(b) for b in bodies) / len(bodies) or 1.0
    document_frequency = Counter(term for body in bodies for term in set(body))
    n = len(bodies)
    scored: list[tuple[float, Document]] = []
    for doc, body in zip(documents, bodies, strict=True):
        counts = Counter(body)
        score = 0.0
        for term in terms:
            tf = counts.get(term, 0)
            if not tf:
                continue
            idf = math.log(
                1 + (n - document_frequency[term] + 0.5) / (document_frequency[term] + 0.5)
            )
            score += idf * tf * (K1 + 1) / (tf + K1 * (1 - B + B * len(body) / average_length))
        if score > 0:
            scored.append((round(score, 6), doc))
    scored.sort(key=lambda pair: (-pair[0], pair[1].id))
    return [{"id": d.id, "title": d.title, "score": s} for s, d in scored[:limit]]


@app.task(name="research.paper", autoretry_for=RETRY_ANY)
def research_paper(
    query: str, max_results: int = 10, documents: list[dict[str, Any]] | None = None
) -> dict[str, Any]:
    """Rank ``documents`` (or the bundled corpus) for ``query``; invalid input is permanent."""
    request = ResearchRequest.model_validate(
        {"query": query, "max_results": max_results, "documents": documents}
    )
    corpus = request.documents if request.documents is not None else DEFAULT_CORPUS
    results = rank_documents(request.query, corpus, request.max_results)
    return {"query": request.query, "searched": len(corpus), "results": results}
