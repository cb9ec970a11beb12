"""Scenario 10: a two-node cluster with quorum event queues; one node stops mid-publish."""

from __future__ import annotations

import threading
import time
import uuid
from collections import Counter

from kombu import Connection

from events import Event, EventBus
from kitty_tasks.broker import apply_topology
from kitty_tasks.topology import FABRICATION_EVENTS, QueueType, build_topology
from tests.reliability.conftest import NodeFactory
from tests.reliability.helpers import Ledger
from tests.reliability.node import wait_for

EVENTS = 2_000
BATCH = 20


def test_quorum_event_queues_lose_no_confirmed_event_when_a_node_stops(
    node_factory: NodeFactory,
) -> None:
    """Guarantee: with quorum queues no confirmed event is lost when a cluster node stops."""
    # Given two nodes joined into one cluster, with the topology's event queues as quorum queues
    first = node_factory("cluster-a").start()
    second = node_factory("cluster-b")
    second.base.mkdir(parents=True, exist_ok=True)
    # Same cookie: the nodes must trust each other.
    (second.base / ".erlang.cookie").write_bytes((first.base / ".erlang.cookie").read_bytes())
    (second.base / ".erlang.cookie").chmod(0o400)
    second.start()
    second.ctl("stop_app")
    second.ctl("join_cluster", first.name)
    second.ctl("start_app")
    wait_for(
        lambda: second.name in first.ctl("cluster_status", "--formatter", "json"),
        timeout=60,
        what="cluster formed",
    )
    with Connection(first.url()) as conn:
        apply_topology(conn, build_topology(event_queue_type=QueueType.QUORUM))
    # quorum queue replicas must be on both nodes before one goes away
    wait_for(
        lambda: (
            second.name
            in first.ctl("list_queues", "name", "members")
            .split(FABRICATION_EVENTS, 1)[1]
            .split("\n", 1)[0]
        ),
        timeout=60,
        what="replicas",
    )
    ledger = Ledger()
    received: Counter[str] = Counter()
    lock = threading.Lock()

    def on_event(event: Event) -> None:
        with lock:
            received[event.event_id] += 1

    # A consumer on the node that stays, a publisher that knows both nodes
    consumer = EventBus(first.url(), source="reliability", declare=False).connect()
    consumer.subscribe("fabrication.#", on_event, queue=FABRICATION_EVENTS)
    consumer.start_consuming(block=False)
    assert consumer.wait_until_consuming(30)
    publisher = EventBus(f"{second.url()};{first.url()}", source="reliability").connect()
    stop = threading.Event()

    def publish() -> None:
        for start in range(0, EVENTS, BATCH):
            batch = [
                publisher.event("fabrication.print.progress", {"n": n}, event_id=str(uuid.uuid4()))
                for n in range(start, start + BATCH)
            ]
            ledger.sent.update(e.event_id for e in batch)
            while not stop.is_set():
                try:
                    publisher.publish_many(batch)
                except Exception:
                    ledger.failed_attempts += 1
                    time.sleep(0.5)  # backoff before the retry, not a synchronisation
                else:
                    ledger.confirmed.update(e.event_id for e in batch)
                    break

    thread = threading.Thread(target=publish)
    thread.start()
    try:
        # When the second node is stopped while events are being published
        wait_for(lambda: len(ledger.confirmed) >= EVENTS // 4, timeout=120, what="a quarter")
        at_stop = len(ledger.confirmed)
        second.stop()
        thread.join(timeout=240)
        # Then every confirmed event reaches the consumer on the surviving node
        wait_for(lambda: not (ledger.confirmed - set(received)), timeout=120, what="all events")
    finally:
        stop.set()
        consumer.stop()
        consumer.disconnect()
        publisher.disconnect()
    ledger.received = received
    print(f"cluster: node stopped at {at_stop} confirmed; {ledger.summary()}")
    assert at_stop < EVENTS
    assert len(ledger.confirmed) == EVENTS
    assert ledger.lost == set()
