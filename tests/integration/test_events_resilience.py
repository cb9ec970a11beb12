"""The consumer under stress on the real broker: dropped connections, stop() mid-event."""

from __future__ import annotations

import threading
import time
from collections import Counter

import pytest

from events import Event, EventBus
from kitty_tasks.core.management import ManagementClient
from tests.conftest import drop_connections
from tests.helpers import queue_counts, wait_for
from tests.integration.events_helpers import Collector, consuming, unique

pytestmark = pytest.mark.rabbitmq

TOTAL = 10_000


@pytest.mark.slow
def test_ten_thousand_events_all_arrive_across_dropped_connections(
    amqp_url: str, management_client: ManagementClient, test_vhost: str
) -> None:
    # Given a subscriber and 10,000 events published with publish_many before it consumes;
    # the handler pauses at the 3,000th event until the connections are dropped, so the
    # drop surely lands mid-stream (the management API lists new connections with a lag)
    collector = Collector()
    dropped_gate = threading.Event()

    def handler(event: Event) -> None:
        collector(event)
        if len(collector.events) == 3_000:
            dropped_gate.wait(30)

    bus = EventBus(amqp_url, source=unique("bulk-service"), prefetch_count=200)
    bus.connect()
    subscription = bus.subscribe("load.bulk.sent", handler)
    started = time.monotonic()
    with EventBus(amqp_url, source="load-service") as publisher:
        published = publisher.publish_many(("load.bulk.sent", {"i": i}) for i in range(TOTAL))
    publish_seconds = time.monotonic() - started
    assert queue_counts(amqp_url, subscription.queue)[0] == TOTAL
    with consuming(bus):
        # When every connection of the vhost is closed in the middle of consuming
        collector.wait_for(lambda events: len(events) >= 3_000, timeout=60)
        dropped = wait_for(lambda: drop_connections(management_client, test_vhost), 20)
        received_at_drop = len(collector.events)
        dropped_gate.set()
        # Then the consumer reconnects and everything arrives
        collector.wait_for(lambda events: len({e.event_id for e in events}) == TOTAL, timeout=60)
        consume_seconds = time.monotonic() - started - publish_seconds
        assert bus.wait_until_consuming(10)
    assert dropped >= 1
    assert received_at_drop < TOTAL, "the drop happened after consuming finished"
    ids = Counter(collector.ids)
    assert set(ids) == {e.event_id for e in published}
    # At-least-once: only events in flight at the drop may come twice (at most the prefetch)
    assert sum(ids.values()) - TOTAL <= 200
    assert queue_counts(amqp_url, subscription.queue)[0] == 0
    print(
        f"\n10k events: publish_many {publish_seconds:.2f}s, consume {consume_seconds:.2f}s, "
        f"{sum(ids.values()) - TOTAL} redelivered after the drop"
    )


def test_stop_finishes_the_event_in_hand_acks_it_and_returns(amqp_url: str) -> None:
    # Given a slow handler in the middle of an event, and more events waiting
    in_hand = threading.Event()
    release = threading.Event()
    finished: list[str] = []

    def slow(event: Event) -> None:
        in_hand.set()
        release.wait(10)
        finished.append(event.event_id)

    bus = EventBus(amqp_url, source=unique("stopping-service"), prefetch_count=1)
    bus.connect()
    subscription = bus.subscribe("fabrication.print.slow", slow)
    with EventBus(amqp_url, source="fabrication-service") as publisher:
        events = publisher.publish_many([("fabrication.print.slow", {"n": i}) for i in range(3)])
    consumer = threading.Thread(target=bus.start_consuming)
    consumer.start()
    assert in_hand.wait(10)
    # When stop() is called from another thread while the handler works
    stopper = threading.Thread(target=bus.stop)
    stopper.start()
    time.sleep(0.3)
    assert stopper.is_alive(), "stop() returned before the event in hand was finished"
    release.set()
    stopper.join(10)
    consumer.join(10)
    # Then stop() and start_consuming() returned, the event was finished and acked,
    # and the others wait in the queue for the next consumer
    assert not stopper.is_alive()
    assert not consumer.is_alive()
    assert finished == [events[0].event_id]
    assert queue_counts(amqp_url, subscription.queue) == (2, 0)
    bus.disconnect()


def test_stop_from_inside_a_handler(amqp_url: str) -> None:
    bus = EventBus(amqp_url, source=unique("self-stopping"))
    bus.connect()
    seen = Collector()

    def handler(event: Event) -> None:
        seen(event)
        bus.stop()

    subscription = bus.subscribe("fabrication.print.once", handler)
    with EventBus(amqp_url, source="fabrication-service") as publisher:
        publisher.publish_many([("fabrication.print.once", {"n": i}) for i in range(3)])
    consumer = threading.Thread(target=bus.start_consuming)
    consumer.start()
    consumer.join(15)
    assert not consumer.is_alive()
    assert len(seen.events) == 1
    assert queue_counts(amqp_url, subscription.queue)[0] == 2
    bus.disconnect()
