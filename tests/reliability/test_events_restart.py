"""The event bus across broker restarts, on a throwaway node of the tests' own."""

from __future__ import annotations

from collections import Counter

import pytest

from events import EventBus
from tests.integration.events_helpers import Collector, consuming, unique
from tests.reliability.node import RabbitNode

TOTAL = 2_000


@pytest.mark.parametrize("kill", [False, True], ids=["restart", "sigkill"])
def test_consumer_and_publisher_survive_a_broker_restart(
    rabbit_node: RabbitNode, node_url: str, kill: bool
) -> None:
    # Given a subscriber halfway through 2,000 persistent, confirmed events
    collector = Collector()
    bus = EventBus(node_url, source=unique("restart-service"), prefetch_count=50)
    bus.connect()
    bus.subscribe("load.restart.sent", collector)
    publisher = EventBus(node_url, source="load-service")
    publisher.connect()
    published = publisher.publish_many(("load.restart.sent", {"i": i}) for i in range(TOTAL))
    with consuming(bus):
        collector.wait_for(lambda events: len(events) >= TOTAL // 4, timeout=60)
        # When the broker restarts (cleanly, or killed with SIGKILL)
        rabbit_node.restart(kill=kill)
        # Then the consumer reconnects and gets every event, none skipped
        collector.wait_for(lambda events: len({e.event_id for e in events}) == TOTAL, timeout=90)
        # and the same publisher object publishes again on fresh connections
        after = publisher.publish("load.restart.sent", {"i": "after"})
        collector.wait_for_id(after.event_id, timeout=30)
    publisher.disconnect()
    ids = Counter(collector.ids)
    assert set(ids) - {after.event_id} == {e.event_id for e in published}
    duplicates = sum(ids.values()) - TOTAL - 1
    print(f"\n{'SIGKILL' if kill else 'restart'}: {duplicates} event(s) delivered twice")
    if not kill:
        # A clean stop keeps every ack: only events in flight (at most the prefetch) come twice.
        # After SIGKILL the broker may also redeliver events whose acks it had not yet written
        # to disk: at-least-once, which is what the idempotency helper is for.
        assert duplicates <= 50
