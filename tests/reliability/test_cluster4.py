"""Scenario 10c: a 3-node RabbitMQ 4.x cluster in the quorum profile loses a node mid-flow."""

from __future__ import annotations

import shutil
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator

import pytest
from kombu import Connection, Consumer, Exchange, Message, Producer, Queue

from kitty_tasks.core.topology import (
    RESEARCH_TASKS,
    TASKS_EXCHANGE,
    TopologyProfile,
    build_topology,
)
from tests.reliability.conftest import NODE_PREFIX, NodeFactory, _require_chroot
from tests.reliability.helpers import Ledger
from tests.reliability.node import RABBITMQ4_ROOT, ChrootNode, wait_for
from tests.reliability.test_cluster import EVENTS, PUBLISH_TIMEOUT, Stream, make_cluster

TASKS = 2_000
BATCH = 20


@pytest.fixture(scope="module")
def chroot_factory() -> Iterator[NodeFactory]:
    """Nodes of the RabbitMQ 4.x chroot; every one killed, and its files removed, at the end."""
    _require_chroot()
    base = RABBITMQ4_ROOT / "tmp" / f"{NODE_PREFIX}-{uuid.uuid4().hex[:6]}"
    factory = NodeFactory(base, ChrootNode)
    yield factory
    factory.close()
    if factory.nodes:
        node = factory.nodes[0]
        assert isinstance(node, ChrootNode)
        node.shutdown_epmd()
    shutil.rmtree(base, ignore_errors=True)


class TaskStream:
    """Publishes TASKS task messages in confirmed batches; a consumer on another node acks."""

    def __init__(self, publish_url: str, consume_url: str) -> None:
        self.ledger = Ledger()
        self.received: Counter[str] = Counter()
        self.stop = threading.Event()
        options = {"confirm_publish": True, "read_timeout": PUBLISH_TIMEOUT}
        self.publish_connection = Connection(publish_url, transport_options=options)
        self.consume_connection = Connection(consume_url)
        self.publisher = threading.Thread(target=self._publish)
        self.consumer = threading.Thread(target=self._consume)

    def _publish(self) -> None:
        exchange = Exchange(TASKS_EXCHANGE, type="direct")
        connection: Connection | None = None
        for start in range(0, TASKS, BATCH):
            ids = [str(uuid.uuid4()) for _ in range(BATCH)]
            self.ledger.sent.update(ids)
            while not self.stop.is_set():
                try:
                    if connection is None:
                        # The URL lists c then a: a new connection fails over to a.
                        connection = self.publish_connection.clone()
                        connection.connect()
                    producer = Producer(connection.default_channel)
                    for task_id in ids:
                        producer.publish(
                            {"n": start}, exchange=exchange, routing_key=RESEARCH_TASKS,
                            message_id=task_id, delivery_mode=2, retry=False,
                        )  # fmt: skip
                except Exception:
                    # Not confirmed: never counted. Reconnect, then publish the same ids again.
                    self.ledger.failed_attempts += 1
                    if connection is not None:
                        connection.release()
                    connection = None
                    time.sleep(0.5)
                else:
                    self.ledger.confirmed.update(ids)
                    break
        if connection is not None:
            connection.release()

    def _consume(self) -> None:
        def on_message(body: object, message: Message) -> None:
            self.received[message.properties["message_id"]] += 1
            message.ack()

        queue = Queue(RESEARCH_TASKS, no_declare=True)
        connection = self.consume_connection
        with connection, Consumer(connection, [queue], callbacks=[on_message], prefetch_count=50):
            while not self.stop.is_set():
                try:
                    connection.drain_events(timeout=0.5)
                except TimeoutError:
                    continue

    def start(self) -> None:
        self.consumer.start()
        self.publisher.start()

    def close(self) -> None:
        self.stop.set()
        self.publisher.join(timeout=60)
        self.consumer.join(timeout=60)
        self.ledger.received = self.received


@pytest.mark.timeout(600)
def test_4x_cluster_in_the_quorum_profile_loses_a_node_and_no_confirmed_message_is_lost(
    chroot_factory: NodeFactory,
) -> None:
    """Guarantee: with quorum tasks and events, a node down loses nothing confirmed."""
    # Given 3 RabbitMQ 4.x nodes in the quorum profile; consumers on a, publishers on c then a
    a, _b, c = make_cluster(
        chroot_factory, 3, "quorum4", build_topology(profile=TopologyProfile.QUORUM)
    )
    events = Stream(f"{c.url()};{a.url()}", a.url())
    tasks = TaskStream(f"{c.url()};{a.url()}", a.url())
    try:
        events.start()
        tasks.start()
        # When node c stops while tasks and events are published through it
        # (the event bus waits once per batch, task messages here once each: events run ahead)
        wait_for(
            lambda: (
                len(events.ledger.confirmed) >= EVENTS // 4 and len(tasks.ledger.confirmed) >= BATCH
            ),
            timeout=120,
            what="a quarter of the events, and tasks flowing",
        )
        at_stop = (len(tasks.ledger.confirmed), len(events.ledger.confirmed))
        c.stop()
        # Then both fail over to a, and a's consumers receive every confirmed message
        events.thread.join(timeout=240)
        tasks.publisher.join(timeout=240)
        for stream in (events, tasks):
            wait_for(
                lambda s=stream: not (s.ledger.confirmed - set(s.received)),  # type: ignore[misc]
                timeout=60,
                what="every confirmed message",
                progress=lambda s=stream: len(s.received),  # type: ignore[misc]
            )
    finally:
        events.close()
        tasks.close()
    print(
        f"4.x quorum cluster, node stopped at {at_stop[0]} tasks / {at_stop[1]} events confirmed:"
        f" tasks {tasks.ledger.summary()}; events {events.ledger.summary()}"
    )
    assert max(at_stop) < TASKS, "the node must stop while both still flow"
    for stream in (events, tasks):
        assert len(stream.ledger.confirmed) == TASKS
        assert stream.ledger.lost == set()
