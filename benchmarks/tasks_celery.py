"""The no-op task the drain and enqueue cases send through the platform's Celery app."""

from __future__ import annotations

from typing import Any

from benchmarks.marks import mark
from kitty_tasks.runtime.application import app

__all__ = ["NOOP_TASK", "app", "noop"]

NOOP_TASK = "bench.noop"


# No result: Dramatiq, the drain's baseline, stores none either, and a no-op has nothing to say.
@app.task(name=NOOP_TASK, ignore_result=True)
def noop(seq: int, last: int, payload: dict[str, Any]) -> None:
    """Do nothing but mark the first and the last task of a drain."""
    if seq == 0:
        mark("first")
    elif seq == last:
        mark("last")
