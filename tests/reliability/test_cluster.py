"""Scenario 10: a RabbitMQ cluster on this machine, quorum event queues, a node stops."""

from __future__ import annotations

import threading
import time
import uuid
from collections import Counter

import pytest
from kombu import Connection

from events import Event, EventBus
from kitty_tasks.core.declarer import apply_topology
from kitty_tasks.core.topology import FABRICATION_EVENTS, QueueType, Topology, build_topology
from tests.reliability.conftest import NodeFactory
from tests.reliability.helpers import Ledger
from tests.reliability.node import RabbitNode, wait_for

EVENTS = 2_000
BATCH = 20
#: The publisher's confirm bound: short, so an unavailable queue shows up fast as a timeout.
PUBLISH_TIMEOUT = 3.0


def make_cluster(
    factory: NodeFactory,
    size: int,
    label: str,
    topology: Topology = build_topology(event_queue_type=QueueType.QUORUM),  # noqa: B008
) -> list[RabbitNode]:
    """Start ``size`` nodes sharing one cookie and join them to the first; apply ``topology``."""
    first = factory(f"{label}-a").start()
    nodes = [first]
    for letter in "bcdefg"[: size - 1]:
        node = factory(f"{label}-{letter}")
        node.base.mkdir(parents=True, exist_ok=True)
        # Same cookie: cluster members must trust each other.
        cookie = node.base / ".erlang.cookie"
        cookie.write_bytes((first.base / ".erlang.cookie").read_bytes())
        cookie.chmod(0o400)
        node.start()
        node.ctl("stop_app")
        node.ctl("join_cluster", first.name)
        node.ctl("start_app")
        node.wait_until_ready()
        nodes.append(node)
    wait_for(
        lambda: all(n.name in first.ctl("cluster_status", "--formatter", "json") for n in nodes),
        timeout=60,
        what="cluster formed",
    )
    with Connection(first.url()) as conn:
        apply_topology(conn, topology)

    def replicated() -> bool:
        rows = first.ctl("list_queues", "name", "type", "members", "--no-table-headers")
        line = next(r for r in rows.splitlines() if r.startswith(FABRICATION_EVENTS + "\t"))
        return "quorum" in line and all(n.name in line for n in nodes)

    wait_for(replicated, timeout=60, what="quorum replicas on every node")
    return nodes


class Stream:
    """Publishes EVENTS events in confirmed batches on a thread; subscribes on another node."""

    def __init__(self, publish_url: str, consume_url: str) -> None:
        self.ledger = Ledger()
        self.received: Counter[str] = Counter()
        self._lock = threading.Lock()
        self.stop = threading.Event()
        self.consumer = EventBus(consume_url, source="reliability", declare=False).connect()
        self.consumer.subscribe("fabrication.#", self._on_event, queue=FABRICATION_EVENTS)
        self.publisher = EventBus(
            publish_url, source="reliability", publish_timeout=PUBLISH_TIMEOUT
        ).connect()
        self.thread = threading.Thread(target=self._publish)

    def _on_event(self, event: Event) -> None:
        with self._lock:
            self.received[event.event_id] += 1

    def _publish(self) -> None:
        for start in range(0, EVENTS, BATCH):
            batch = [
                self.publisher.event(
                    "fabrication.print.progress", {"n": n}, event_id=str(uuid.uuid4())
                )
                for n in range(start, start + BATCH)
            ]
            self.ledger.sent.update(e.event_id for e in batch)
            while not self.stop.is_set():
                try:
                    self.publisher.publish_many(batch)
                except Exception:
                    # Not confirmed: never counted. Back off, then publish the same ids again.
                    self.ledger.failed_attempts += 1
                    time.sleep(0.5)
                else:
                    self.ledger.confirmed.update(e.event_id for e in batch)
                    break

    def start(self) -> None:
        self.consumer.start_consuming(block=False)
        assert self.consumer.wait_until_consuming(30)
        self.thread.start()

    def close(self) -> None:
        self.stop.set()
        self.thread.join(timeout=60)
        self.consumer.stop()
        self.consumer.disconnect()
        self.publisher.disconnect()
        self.ledger.received = self.received


@pytest.mark.timeout(420)
def test_three_nodes_one_stopped_consumers_continue_and_no_confirmed_event_is_lost(
    node_factory: NodeFactory,
) -> None:
    """Guarantee: quorum queues keep every confirmed event and keep serving with a node down."""
    # Given a 3-node cluster (quorum needs a majority), consumer on a, publisher on c then a
    a, _b, c = make_cluster(node_factory, 3, "trio")
    stream = Stream(f"{c.url()};{a.url()}", a.url())
    try:
        stream.start()
        # When node c stops while events are being published through it
        wait_for(lambda: len(stream.ledger.confirmed) >= EVENTS // 4, timeout=120, what="a quarter")
        at_stop = len(stream.ledger.confirmed)
        c.stop()
        # Then publishing fails over to a, and the consumer on a receives every confirmed event
        stream.thread.join(timeout=240)
        wait_for(
            lambda: not (stream.ledger.confirmed - set(stream.received)),
            timeout=60,
            what="every confirmed event",
            progress=lambda: len(stream.received),
        )
    finally:
        stream.close()
    print(f"3-node cluster, node stopped at {at_stop} confirmed: {stream.ledger.summary()}")
    assert at_stop < EVENTS
    assert len(stream.ledger.confirmed) == EVENTS
    assert stream.ledger.lost == set()


@pytest.mark.timeout(420)
def test_two_nodes_one_stopped_nothing_confirmed_is_lost_and_service_resumes(
    node_factory: NodeFactory,
) -> None:
    """Guarantee: with 2 nodes no confirmed event is lost; a lost majority refuses, not fakes."""
    # Given the 2-node cluster: a quorum queue of 2 members needs both for a majority
    a, b = make_cluster(node_factory, 2, "duo")
    stream = Stream(f"{b.url()};{a.url()}", a.url())
    try:
        stream.start()
        # When node b stops while events are being published
        wait_for(lambda: len(stream.ledger.confirmed) >= EVENTS // 4, timeout=120, what="a quarter")
        at_stop = len(stream.ledger.confirmed)
        b.stop()
        # Then publishes are not confirmed (PublishTimeout), so none is counted as sent
        wait_for(lambda: stream.ledger.failed_attempts >= 1, timeout=60, what="a refused publish")
        during_outage = len(stream.ledger.confirmed)
        # When b comes back, Then publishing and consuming resume and every confirmed event arrives
        b.start()
        stream.thread.join(timeout=240)
        wait_for(
            lambda: not (stream.ledger.confirmed - set(stream.received)),
            timeout=60,
            what="every confirmed event",
            progress=lambda: len(stream.received),
        )
    finally:
        stream.close()
    print(
        f"2-node cluster, node stopped at {at_stop} confirmed ({during_outage} when the first "
        f"publish failed): {stream.ledger.summary()}"
    )
    assert at_stop < EVENTS
    assert len(stream.ledger.confirmed) == EVENTS
    assert stream.ledger.lost == set()
