"""Queue depth over the last minutes: samples of the management API kept in a ring."""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Mapping
from typing import Any

from kitty_tasks.core.management import ManagementClient
from kitty_tasks.ops.queues import is_reported, rpc_service_queues

__all__ = ["DepthHistory", "read_depths"]

#: Seconds between two samples: the management API refreshes its numbers every 5 s.
SAMPLE_INTERVAL = 5.0
#: Samples kept: ten minutes at one every five seconds.
SAMPLES_KEPT = 120


def read_depths(management: ManagementClient, vhost: str) -> dict[str, int]:
    """Ready plus unacked messages of every queue the platform reports (as health does)."""
    rpc_queues = rpc_service_queues(management, vhost)
    return {
        str(q["name"]): int(q.get("messages_ready") or 0)
        + int(q.get("messages_unacknowledged") or 0)
        for q in management.queues(vhost)
        if is_reported(str(q["name"]), rpc_queues)
    }


class DepthHistory:
    """The last ``SAMPLES_KEPT`` samples of every queue's depth; safe across threads."""

    def __init__(self, kept: int = SAMPLES_KEPT) -> None:
        self._samples: deque[tuple[float, dict[str, int]]] = deque(maxlen=kept)
        self._lock = threading.Lock()

    def record(self, when: float, depths: Mapping[str, int]) -> None:
        """Keep one sample taken at unix time ``when``."""
        with self._lock:
            self._samples.append((when, dict(depths)))

    def series(self) -> dict[str, Any]:
        """``{"times": [...], "queues": {name: [depth or None, ...]}}`` for the chart."""
        with self._lock:
            samples = list(self._samples)
        names = sorted({name for _, depths in samples for name in depths})
        return {
            "times": [when for when, _ in samples],
            "queues": {name: [depths.get(name) for _, depths in samples] for name in names},
        }
