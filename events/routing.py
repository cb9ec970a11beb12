"""Topic routing: subscription patterns and how they match event types."""

from __future__ import annotations

import re
from functools import lru_cache

__all__ = ["check_pattern", "topic_matches"]

_WORD = r"(\*|#|[a-z0-9_-]+)"
#: A binding pattern: dotted lower-case words, ``*`` (one word) or ``#`` (zero or more).
PATTERN = re.compile(rf"^{_WORD}(\.{_WORD})*$")


def check_pattern(pattern: object) -> str:
    """Return ``pattern`` if it is a valid topic pattern, else raise ``ValueError``."""
    if not isinstance(pattern, str) or not PATTERN.match(pattern) or len(pattern.encode()) > 255:
        raise ValueError(
            f"pattern {pattern!r} is not a topic pattern like 'fabrication.print.#' "
            "(lower-case dotted words, '*' for one word, '#' for any number)"
        )
    return pattern


@lru_cache(maxsize=1024)
def topic_matches(pattern: str, routing_key: str) -> bool:
    """True if a topic binding ``pattern`` selects ``routing_key``, as RabbitMQ decides."""
    return _match(tuple(pattern.split(".")), tuple(routing_key.split(".")))


def _match(pattern: tuple[str, ...], words: tuple[str, ...]) -> bool:
    if not pattern:
        return not words
    head, rest = pattern[0], pattern[1:]
    if head == "#":
        return any(_match(rest, words[i:]) for i in range(len(words) + 1))
    if not words:
        return False
    return (head in ("*", words[0])) and _match(rest, words[1:])
