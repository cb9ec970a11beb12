"""Scenario 2: `rabbitmqctl close_all_connections` under load; all reconnect, nothing lost."""

from __future__ import annotations

import threading
from collections import Counter
from pathlib import Path
from typing import Any

from events import Event, EventBus
from rpc import RPCClient, RPCServer
from tests.reliability.helpers import WorkerProcess, read_ids
from tests.reliability.node import RabbitNode, wait_for
from tests.reliability.workerapp import RECORD_TASK, make_app

EVENTS = 1_000
TASKS = 300
CALLS = 50


def test_everyone_reconnects_after_close_all_connections(
    rabbit_node: RabbitNode, node_url: str, tmp_path: Path
) -> None:
    """Guarantee: EventBus, RPC server/client and a Celery worker reconnect; nothing is lost."""
    # Given an EventBus subscriber, an RPC server, a Celery worker and work queued for each
    worker = WorkerProcess(node_url, tmp_path / "worker").start()
    received: Counter[str] = Counter()
    lock = threading.Lock()

    def on_event(event: Event) -> None:
        with lock:
            received[event.event_id] += 1

    bus = EventBus(node_url, source="reliability", prefetch_count=20).connect()
    bus.subscribe("reliability.drop.#", on_event, queue="reliability.drop.events")
    server = RPCServer(node_url, "reliability.echo")
    server.register_handler(lambda payload: {"n": payload["n"]})
    server.connect()
    threading.Thread(target=server.start, daemon=True).start()
    assert server.wait_ready(30)
    client = RPCClient(node_url)
    client.connect()
    with EventBus(node_url, source="reliability") as publisher:
        events = publisher.publish_many(("reliability.drop.tick", {"n": n}) for n in range(EVENTS))
    app = make_app(node_url)
    tasks = [f"drop-{n}" for n in range(TASKS)]
    for n, task_id in enumerate(tasks):
        app.tasks[RECORD_TASK].apply_async(args=(n,), task_id=task_id)
    bus.start_consuming(block=False)
    wait_for(lambda: len(received) >= EVENTS // 10, timeout=60, what="consuming under way")
    # When every connection on the node is closed by the broker
    rabbit_node.close_all_connections()
    # Then the consumers finish the backlog on new connections
    wait_for(
        lambda: len(received) == EVENTS,
        timeout=60,
        what="every event",
        progress=lambda: len(received),
    )
    wait_for(
        lambda: set(read_ids(worker.record_dir, "runs")) == set(tasks),
        timeout=60,
        what="every task",
        progress=lambda: len(read_ids(worker.record_dir, "runs")),
    )
    # and RPC works again from the same client object (a call may fail once, then succeeds)
    answers: list[Any] = []
    failures = 0
    for n in range(CALLS):
        try:
            answers.append(client.call("reliability.echo", {"n": n}, timeout=10)["n"])
        except Exception:
            failures += 1
            answers.append(
                wait_for(
                    lambda n=n: client.call("reliability.echo", {"n": n}, timeout=5),
                    timeout=60,
                    what="RPC after the drop",
                )["n"]
            )
    worker_alive = worker.alive
    bus.stop()
    bus.disconnect()
    client.disconnect()
    server.stop()
    worker.stop()
    app.close()
    runs = read_ids(worker.record_dir, "runs")
    duplicates = sum(received.values()) - EVENTS
    print(
        f"close_all_connections: events sent={EVENTS} received={len(received)} dup={duplicates}; "
        f"tasks sent={TASKS} ran={len(runs)} dup={sum(runs.values()) - TASKS}; "
        f"rpc calls={CALLS} ok={len(answers)} first-try failures={failures}"
    )
    assert set(received) == {e.event_id for e in events}
    assert set(runs) == set(tasks)
    assert answers == list(range(CALLS))
    assert worker_alive
