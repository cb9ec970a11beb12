"""The topology as data: names, arguments, ladder buckets."""

from __future__ import annotations

import pytest

from kitty_tasks.core.topology import (
    DLX_EXCHANGE,
    DLX_QUEUE,
    TASK_QUEUES,
    TOPOLOGY,
    QueueType,
    build_topology,
    delay_exchange_name,
    dlq_name,
    pick_bucket,
    subscriber_queue_name,
    to_definitions,
)
from kitty_tasks.runtime.routing import task_queues


def test_guide_queue_limits_and_ttl():
    assert TOPOLOGY.queue("research.tasks").arguments["x-max-length"] == 10_000
    assert TOPOLOGY.queue("cad.tasks").arguments["x-max-length"] == 5_000
    assert "x-max-length" not in TOPOLOGY.queue("brain.commands").arguments
    assert TOPOLOGY.queue("fabrication.events").arguments["x-max-length"] == 100_000
    assert TOPOLOGY.queue("notifications").arguments["x-max-length"] == 50_000


def test_the_audit_log_is_a_stream_of_every_event_kept_30_days_under_a_byte_cap():
    audit = TOPOLOGY.queue("audit.events")
    assert audit.is_stream
    assert audit.arguments == {
        "x-queue-type": "stream",
        "x-max-age": "30D",
        "x-max-length-bytes": 1024**3,
        "x-stream-max-segment-size-bytes": 64 * 1024**2,
    }
    assert [(b.exchange, b.routing_key) for b in audit.bindings] == [("kitty.events", "#")]
    # A stream cannot reject, so it neither dead-letters nor has a DLQ
    with pytest.raises(KeyError):
        TOPOLOGY.queue(dlq_name("audit.events"))
    quorum = build_topology(event_queue_type=QueueType.QUORUM)
    assert quorum.queue("audit.events").arguments == audit.arguments


def test_every_work_queue_dead_letters_into_its_own_dlq():
    for name in (*TASK_QUEUES, "fabrication.events", "notifications"):
        arguments = TOPOLOGY.queue(name).arguments
        assert arguments["x-dead-letter-exchange"] == DLX_EXCHANGE
        assert arguments["x-dead-letter-routing-key"] == name
        dlq = TOPOLOGY.queue(dlq_name(name))
        assert [(b.exchange, b.routing_key) for b in dlq.bindings] == [(DLX_EXCHANGE, name)]
        assert "x-dead-letter-exchange" not in dlq.arguments


def test_unrouted_dead_letters_fall_into_dlx_queue():
    assert TOPOLOGY.exchange(DLX_EXCHANGE).arguments == {"alternate-exchange": "dlx.unrouted"}
    assert [b.exchange for b in TOPOLOGY.queue(DLX_QUEUE).bindings] == ["dlx.unrouted"]


def test_task_queues_are_priority_queues_with_reject_publish():
    for queue in task_queues():
        assert queue.queue_arguments["x-max-priority"] == 10
        assert queue.exchange.name == "kitty.tasks"
        assert queue.routing_key == queue.name
    assert TOPOLOGY.queue("research.tasks").arguments["x-overflow"] == "reject-publish"


def test_delay_buckets_return_messages_by_their_routing_key():
    bucket = TOPOLOGY.queue(delay_exchange_name(30))
    assert bucket.name == "kitty.delay.30s"
    assert bucket.arguments == {"x-message-ttl": 30_000, "x-dead-letter-exchange": ""}
    assert TOPOLOGY.exchange("kitty.delay.2h").type == "fanout"


@pytest.mark.parametrize(
    ("delay", "bucket"), [(0, 1), (1, 1), (1.01, 5), (29, 30), (121, 300), (10**6, 7200)]
)
def test_pick_bucket_takes_the_first_that_waits_long_enough(delay: float, bucket: int):
    assert pick_bucket(delay) == bucket


def test_pick_bucket_needs_buckets():
    with pytest.raises(ValueError, match="at least one bucket"):
        pick_bucket(1, [])


def test_subscriber_queue_names_are_readable():
    assert (
        subscriber_queue_name("audit-service", "fabrication.#")
        == "audit-service.fabrication.all.events"
    )
    assert subscriber_queue_name("x", "a.*.c") == "x.a.any.c.events"


def test_quorum_variant_changes_only_event_queues():
    quorum = build_topology(event_queue_type=QueueType.QUORUM)
    assert quorum.queue("fabrication.events").arguments["x-queue-type"] == "quorum"
    assert "x-queue-type" not in quorum.queue("research.tasks").arguments


def test_definitions_hold_no_users_and_every_entity():
    definitions = to_definitions()
    assert "users" not in definitions
    assert "permissions" not in definitions
    assert len(definitions["queues"]) == len(TOPOLOGY.queues)
    assert len(definitions["exchanges"]) == len(TOPOLOGY.exchanges)
