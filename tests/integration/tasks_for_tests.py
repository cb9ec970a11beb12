"""Tasks that only tests use: they record each run in a file and fail on purpose."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from kitty_tasks.core.errors import Permanent
from kitty_tasks.runtime.application import app
from kitty_tasks.runtime.task import RETRY_ANY


def _record(path: str, line: str) -> int:
    """Append a line to ``path`` and return how many lines it now has."""
    with Path(path).open("a") as log:
        log.write(line + "\n")
    return len(Path(path).read_text().splitlines())


@app.task(name="research.record_order", bind=True)
def record_order(self: Any, path: str, label: str) -> str:
    """Record ``label`` so a test can read the order in which tasks ran."""
    _record(path, label)
    return label


@app.task(name="research.flaky", bind=True, autoretry_for=RETRY_ANY)
def flaky(self: Any, path: str, failures: int) -> dict[str, Any]:
    """Fail the first ``failures`` runs, then succeed; every run is timestamped in ``path``."""
    runs = _record(path, f"{time.time():.6f} {self.request.retries}")
    if runs <= failures:
        raise ConnectionError(f"simulated outage, run {runs}")
    return {"runs": runs}


@app.task(name="research.always_fails", bind=True, autoretry_for=RETRY_ANY)
def always_fails(self: Any, path: str) -> None:
    """Fail every run with a ValueError; runs are counted in ``path``."""
    runs = _record(path, f"{time.time():.6f} {self.request.retries}")
    raise ValueError(f"bad input on run {runs}")


@app.task(name="research.permanent", bind=True)
def permanent(self: Any, path: str) -> None:
    """Fail with ``Permanent``: must be dead-lettered without a retry."""
    _record(path, "run")
    raise Permanent("this input can never succeed")


@app.task(name="research.explicit_retry", bind=True)
def explicit_retry(self: Any, path: str) -> int:
    """Ask for one retry with Celery's own ``self.retry(countdown=2)``."""
    runs = _record(path, f"{time.time():.6f} {self.request.retries}")
    if runs < 2:
        raise self.retry(countdown=2, exc=ConnectionError("printer offline"))
    return runs


@app.task(name="research.auto_retry", bind=True, autoretry_for=(KeyError,), max_retries=1)
def auto_retry(self: Any, path: str) -> None:
    """Always raise KeyError under Celery's ``autoretry_for``."""
    runs = _record(path, f"{time.time():.6f} {self.request.retries}")
    raise KeyError(f"missing field on run {runs}")


@app.task(name="research.plain_fails", bind=True)
def plain_fails(self: Any, path: str) -> None:
    """Fail with a ValueError, declaring no retries: Celery's contract fails it at once."""
    runs = _record(path, f"{time.time():.6f} {self.request.retries}")
    raise ValueError(f"plain failure on run {runs}")


@app.task(name="research.headers_after_retry", bind=True, autoretry_for=RETRY_ANY)
def headers_after_retry(self: Any) -> dict[str, Any]:
    """Fail once, then return the custom headers the retried delivery carried."""
    if not self.request.retries:
        raise ConnectionError("first run fails")
    return dict(self.request.headers or {})


@app.task(name="research.retry_elsewhere", bind=True, max_retries=1)
def retry_elsewhere(self: Any, queue: str) -> None:
    """Retry once into ``queue``, then ask again without ``exc``: retries have run out."""
    raise self.retry(queue=queue, countdown=0.1)


@app.task(name="research.collect", bind=True)
def collect(self: Any, results: list[dict[str, Any]]) -> list[str]:
    """A chord's body: the query of each research result, in order."""
    return [result["query"] for result in results]


@app.task(name="research.quiet", bind=True, lifecycle_events=False)
def quiet(self: Any, label: str) -> str:
    """Succeed with lifecycle events switched off for this task."""
    return label


@app.task(name="research.big_result", bind=True)
def big_result(self: Any, size: int) -> str:
    """Return a string of ``size`` characters: too large to ride in a lifecycle event."""
    return "x" * size


@app.task(name="research.hold", bind=True)
def hold(self: Any, path: str, gate: str) -> str:
    """Record a start, then block until someone opens and closes the FIFO ``gate``."""
    _record(path, "start")
    Path(gate).read_text()  # opening a FIFO blocks until a writer opens it; EOF when it closes
    return gate
