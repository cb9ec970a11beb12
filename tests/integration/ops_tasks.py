"""Tasks for the operations tests: a fault switched on and off by a file, and a bad-input task."""

from __future__ import annotations

import os
from pathlib import Path

from kitty_tasks.runtime.application import app
from kitty_tasks.runtime.task import RETRY_ANY

#: While the file this variable names exists, ``research.fragile`` fails.
FAULT_FILE_ENV = "KITTY_TEST_FAULT_FILE"
#: Every run of ``research.fragile`` appends ``fail <item>`` or ``ok <item>`` to this file.
RUNS_FILE_ENV = "KITTY_TEST_RUNS_FILE"


def _log(line: str) -> None:
    runs = os.environ.get(RUNS_FILE_ENV)
    if runs:
        with Path(runs).open("a") as log:
            log.write(line + "\n")


@app.task(name="research.fragile", max_retries=1, autoretry_for=RETRY_ANY)
def fragile(item: int) -> int:
    """Fail with ValueError while the fault file exists (one retry, then the DLQ); else echo."""
    fault = os.environ.get(FAULT_FILE_ENV)
    if fault and Path(fault).exists():
        _log(f"fail {item}")
        raise ValueError(f"fault injected while processing item {item}")
    _log(f"ok {item}")
    return item


@app.task(name="research.needs_key", max_retries=0)
def needs_key(data: dict[str, int]) -> int:
    """Fail with KeyError at once when ``data`` has no ``key`` (a different error to group)."""
    return data["key"]
