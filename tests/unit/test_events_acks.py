"""Batched acks without a broker: AckBatch on a stub channel, a consumer on memory://."""

from __future__ import annotations

import threading
import uuid

import pytest
from kombu import Connection, Exchange, Queue

from events import Event, SchemaRegistry
from events.acks import ACK_DELAY, AckBatch, batch_size
from events.consumer import SubscriptionConsumer
from events.delivery import EventDelivery
from kitty_tasks.core.failure import FailurePolicy
from tests.unit.amqp_stubs import StubChannel, StubPublish

#: Faster than ACK_SLOW_HANDLER (5 ms) between handled events: worth a shared ack.
FAST = 0.001


class Clock:
    """``time.monotonic`` for ``events.acks``, moved by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    clock = Clock()
    monkeypatch.setattr("events.acks.time.monotonic", clock)
    return clock


def handle(batch: AckBatch, clock: Clock, tags: range, gap: float = FAST) -> None:
    """Handled deliveries ``tags``, ``gap`` seconds apart."""
    for tag in tags:
        clock.now += gap
        batch.add(tag)


def test_fast_handlers_share_one_multiple_ack_per_batch(clock: Clock) -> None:
    channel = StubChannel()
    batch = AckBatch(channel, size=5)
    # The first event after a pause is acked at once (nothing to share it with yet)
    handle(batch, clock, range(1, 2), gap=1.0)
    assert channel.settled == [("ack", 1, True)]
    # then fast ones go out five at a time, each batch as one basic.ack(multiple=True)
    handle(batch, clock, range(2, 11))
    assert channel.settled == [("ack", 1, True), ("ack", 6, True)]
    handle(batch, clock, range(11, 12))
    assert channel.settled[-1] == ("ack", 11, True)


def test_a_batch_goes_out_after_ack_delay_even_when_not_full(clock: Clock) -> None:
    channel = StubChannel()
    batch = AckBatch(channel, size=1000)
    handle(batch, clock, range(1, 2), gap=1.0)
    handle(batch, clock, range(2, 4))
    assert not batch.due()
    clock.now += ACK_DELAY
    assert batch.due()
    # The consumer flushes a due batch before it reads on
    batch.flush()
    assert channel.settled == [("ack", 1, True), ("ack", 3, True)]
    assert not batch.due()


def test_a_batch_acks_itself_once_its_oldest_event_waited_ack_delay(clock: Clock) -> None:
    channel = StubChannel()
    batch = AckBatch(channel, size=1000)
    handle(batch, clock, range(1, 2), gap=1.0)
    handle(batch, clock, range(2, 300), gap=0.003)
    acked = [tag for _, tag, _ in channel.settled]
    # one ack at once, then one when a batch's first event has waited ACK_DELAY (0.2 s):
    # 67 gaps of 3 ms after it, so 68 events per ack
    assert acked == [1, 69, 137, 205, 273]


def test_slow_handlers_are_acked_one_by_one(clock: Clock) -> None:
    channel = StubChannel()
    batch = AckBatch(channel, size=25)
    handle(batch, clock, range(1, 4), gap=0.05)
    assert channel.settled == [("ack", 1, True), ("ack", 2, True), ("ack", 3, True)]


def test_flushing_an_empty_batch_sends_nothing() -> None:
    channel = StubChannel()
    AckBatch(channel, size=5).flush()
    assert channel.settled == []


@pytest.mark.parametrize(("prefetch", "size"), [(100, 25), (10, 5), (1, 1), (500, 25)])
def test_a_batch_holds_at_most_half_the_prefetch(prefetch: int, size: int) -> None:
    assert batch_size(prefetch) == size


def test_a_consumer_on_the_memory_transport_acks_every_handled_event_then_stops() -> None:
    # Given five events waiting in a queue of Kombu's in-memory broker
    name = f"memory-{uuid.uuid4().hex[:8]}"
    connection = Connection("memory://")
    queue = Queue(name, Exchange(name, "direct"), routing_key=name)
    events = [Event(event_type="fabrication.print.started", data={"n": n}) for n in range(5)]
    with connection.Producer() as producer:
        for event in events:
            producer.publish(
                event.encode(),
                exchange=queue.exchange,
                routing_key=name,
                declare=[queue],
                **event.to_properties(),
            )
    handled: list[Event] = []
    all_handled = threading.Event()

    def handler(event: Event) -> None:
        handled.append(event)
        if len(handled) == len(events):
            all_handled.set()

    policy = FailurePolicy(StubPublish(), max_retries=1)
    consumer = SubscriptionConsumer(
        connection,
        queue=name,
        prefetch_count=10,
        process=EventDelivery(name, handler, SchemaRegistry(), policy),
        topologies=(),
        stopping=threading.Event(),
    )
    thread = threading.Thread(target=consumer.run_forever)
    thread.start()
    try:
        # When the consumer has handled them
        assert all_handled.wait(10)
    finally:
        consumer.should_stop = True
        thread.join(10)
    # Then it stopped, and every event was acked: none is left in the queue
    assert not thread.is_alive()
    assert [e.event_id for e in handled] == [e.event_id for e in events]
    with connection.channel() as channel:
        assert channel.queue_declare(name, passive=True).message_count == 0
