"""A client with tracing off, for the tracing test: what it sends and what it imported.

``python -m tests.integration.untraced_client SERVICE [block]``: with ``block``,
OpenTelemetry cannot be imported at all (as where the extra is not installed).
"""

from __future__ import annotations

import json
import os
import sys

if sys.argv[2:] == ["block"]:
    for name in ("opentelemetry", "opentelemetry.sdk", "opentelemetry.trace"):
        sys.modules[name] = None  # type: ignore[assignment]  # import now raises ImportError

from events import EventBus
from rpc import RPCClient
from tests.integration import tasks_for_tests


def main() -> None:
    """Enqueue a task, publish an event, make an RPC call; print what was imported."""
    url = os.environ["RABBITMQ_URL"]
    task = tasks_for_tests.record_order.apply_async(("/dev/null", "untraced"), queue="cad.tasks")
    with EventBus(url, source="untraced-client") as bus:
        event = bus.publish("fabrication.print.started", {"job_id": "untraced"})
    with RPCClient(url) as client:
        answer = client.call(sys.argv[1], {"n": 1}, timeout=10)
    report = {
        "task_id": task.id,
        "event_id": event.event_id,
        "event_traceparent": event.traceparent,
        "answer": answer,
        "otel_imported": any(
            name == "opentelemetry" or name.startswith("opentelemetry.")
            for name, module in sys.modules.items()
            if module is not None
        ),
    }
    print(json.dumps(report), flush=True)


if __name__ == "__main__":
    main()
