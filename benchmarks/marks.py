"""First/last-task marks: a worker process writes the wall-clock time it ran a marked task."""

from __future__ import annotations

import os
import time
from pathlib import Path

__all__ = ["ENV_MARKS", "clear", "mark", "read"]

#: The environment variable naming the directory marks go to.
ENV_MARKS = "KITTY_BENCH_MARKS"


def mark(name: str) -> None:
    """Record now under ``name``; a no-op outside a benchmark run."""
    directory = os.environ.get(ENV_MARKS)
    if directory:
        (Path(directory) / name).write_text(repr(time.time()))


def read(directory: Path, name: str) -> float | None:
    """The time marked under ``name``, or None while it is not there (or half written)."""
    try:
        return float((directory / name).read_text())
    except (OSError, ValueError):
        return None


def clear(directory: Path) -> None:
    """Remove every mark, before a trial."""
    for path in directory.glob("*"):
        if path.is_file():
            path.unlink()
