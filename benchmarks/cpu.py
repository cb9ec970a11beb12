"""CPU seconds of this process, of process trees we started, and of the broker (from /proc)."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

__all__ = ["CpuClock", "broker_pid", "tree_cpu"]

_TICKS = os.sysconf("SC_CLK_TCK")
_PROC = Path("/proc")


def _stat(pid: int) -> list[str] | None:
    try:
        text = (_PROC / str(pid) / "stat").read_text()
    except OSError:
        return None
    # The command name may hold spaces; the fields after its closing paren are fixed.
    return text[text.rindex(")") + 2 :].split()


def _children(pid: int) -> list[int]:
    kids: list[int] = []
    for task in (_PROC / str(pid) / "task").glob("*"):
        try:
            kids += [int(c) for c in (task / "children").read_text().split()]
        except OSError:
            continue
    return kids


def tree_cpu(pid: int) -> float:
    """CPU seconds of ``pid`` and all its descendants, reaped ones included (via cutime)."""
    total = 0
    stack = [pid]
    while stack:
        current = stack.pop()
        fields = _stat(current)
        if fields is None:
            continue
        # utime, stime, cutime, cstime: a reaped child counts once, in its reaper's c*time.
        total += sum(int(f) for f in fields[11:15])
        stack += _children(current)
    return total / _TICKS


def broker_pid() -> int | None:
    """The pid of the local RabbitMQ node (``beam.smp``), or None when it is elsewhere."""
    for entry in _PROC.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if (entry / "comm").read_text().strip() == "beam.smp":
                return int(entry.name)
        except OSError:
            continue
    return None


@dataclass
class CpuClock:
    """Reads client CPU (this process plus helper process trees) and broker CPU together."""

    broker: int | None
    helpers: tuple[int, ...] = ()
    include_self: bool = True

    def read(self) -> tuple[float, float]:
        """(client CPU seconds, broker CPU seconds) so far; subtract two reads for a window."""
        client = time.process_time() if self.include_self else 0.0
        client += sum(tree_cpu(pid) for pid in self.helpers)
        broker = tree_cpu(self.broker) if self.broker is not None else float("nan")
        return client, broker
