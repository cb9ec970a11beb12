"""A service process for the metrics tests: only an EventBus subscriber, or only an RPCServer.

Usage: python -m tests.integration.metrics_service events URL PATTERN QUEUE
       python -m tests.integration.metrics_service rpc URL SERVICE

Neither calls ``serve_metrics``: with ``KITTY_METRICS_PORT`` set, starting to consume must
serve /metrics. Runs until SIGINT.
"""

from __future__ import annotations

import sys
from typing import Any

from events import Event, EventBus
from rpc import RPCServer

#: Handler failures the event subscriber tolerates: one retry, then the DLQ.
MAX_RETRIES = 1


def serve_events(url: str, pattern: str, queue: str) -> None:
    """Consume ``pattern`` from ``queue``; an event with ``{"fail": true}`` always fails."""

    def handle(event: Event) -> None:
        if event.data.get("fail"):
            raise RuntimeError("told to fail")

    bus = EventBus(url, source="metrics-service", max_retries=MAX_RETRIES, retry_backoff_base=0.1)
    bus.connect()
    bus.subscribe(pattern, handle, queue)
    bus.start_consuming()
    bus.disconnect()


def serve_rpc(url: str, service: str) -> None:
    """Serve ``add`` (returns a + b) and ``boom`` (always raises ValueError)."""
    server = RPCServer(url, service)

    @server.method("add")
    def add(request: dict[str, Any]) -> dict[str, Any]:
        return {"result": request["a"] + request["b"]}

    @server.method("boom")
    def boom(request: dict[str, Any]) -> None:
        raise ValueError("boom")

    server.start()


if __name__ == "__main__":
    if sys.argv[1] == "events":
        serve_events(sys.argv[2], sys.argv[3], sys.argv[4])
    else:
        serve_rpc(sys.argv[2], sys.argv[3])
