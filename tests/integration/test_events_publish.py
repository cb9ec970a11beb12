"""Publishing guarantees on the real broker: confirms, nacks, returns, size limit, batches."""

from __future__ import annotations

import urllib.parse
import uuid
from collections.abc import Iterator

import pika
import pytest
from kombu import Connection

from events import (
    Event,
    EventBus,
    PayloadTooLarge,
    PublishRejected,
    Unroutable,
)
from kitty_tasks.core.declarer import apply_topology
from kitty_tasks.core.management import ManagementClient
from kitty_tasks.core.topology import AUDIT_EVENTS, EVENTS_EXCHANGE
from tests.conftest import url_for_vhost
from tests.helpers import queue_counts
from tests.integration.events_helpers import Collector, consuming, drain, unique

pytestmark = pytest.mark.rabbitmq


@pytest.fixture
def full_queue(amqp_url: str) -> Iterator[tuple[str, str]]:
    """A reject-publish queue of length 1, already full, bound for one event type."""
    queue, event_type = unique("tiny"), f"probe.full.{uuid.uuid4().hex[:8]}"
    with Connection(amqp_url) as connection:
        channel = connection.channel()
        channel.queue_declare(
            queue, durable=True, auto_delete=False,
            arguments={"x-max-length": 1, "x-overflow": "reject-publish"},
        )  # fmt: skip
        channel.queue_bind(queue, EVENTS_EXCHANGE, event_type)
        channel.close()
    with EventBus(amqp_url, source="probe-service") as bus:
        bus.publish(event_type, {"n": 1})
    yield queue, event_type
    with Connection(amqp_url) as connection:
        connection.default_channel.queue_delete(queue)


def test_publishing_into_a_full_reject_publish_queue_raises_naming_the_queue(
    amqp_url: str, full_queue: tuple[str, str]
) -> None:
    queue, event_type = full_queue
    with EventBus(amqp_url, source="probe-service") as bus:
        with pytest.raises(PublishRejected, match=f"queue '{queue}' is full") as caught:
            bus.publish(event_type, {"n": 2})
        assert caught.value.queue == queue
        # The batch form raises too, and the bus keeps working afterwards
        with pytest.raises(PublishRejected):
            bus.publish_many([(event_type, {"n": 3}), (event_type, {"n": 4})])
        bus.publish("probe.other.sent", {"still": "works"})
    assert queue_counts(amqp_url, queue)[0] == 1


def test_an_oversized_payload_raises_and_nothing_is_sent(amqp_url: str) -> None:
    # Given a bus with a 10 KiB limit and a fresh subscriber queue
    source = unique("size-service")
    with EventBus(amqp_url, source=source, max_message_bytes=10 * 1024) as bus:
        subscription = bus.subscribe("probe.size.sent", Collector())
        # When a 20 KB event is published
        with pytest.raises(PayloadTooLarge, match="over the 10,240-byte limit"):
            bus.publish("probe.size.sent", {"blob": "x" * 20_000})
        # and a batch with one oversized event among small ones
        with pytest.raises(PayloadTooLarge):
            bus.publish_many(
                [("probe.size.sent", {"n": 1}), ("probe.size.sent", {"b": "x" * 20_000})]
            )
    # Then nothing reached the queue: not even the small event of the batch
    assert queue_counts(amqp_url, subscription.queue)[0] == 0


def test_the_default_limit_is_one_mebibyte(amqp_url: str) -> None:
    with EventBus(amqp_url, source="size-service") as bus:
        bus.publish("probe.size.sent", {"blob": "x" * 1_000_000})
        with pytest.raises(PayloadTooLarge, match="1,048,576-byte limit"):
            bus.publish("probe.size.sent", {"blob": "x" * 1_048_576})


@pytest.fixture
def bare_url(management_client: ManagementClient) -> Iterator[str]:
    """A vhost with the topology but without audit.events' catch-all ``#`` binding."""
    vhost = f"kitty-test-events-{uuid.uuid4().hex[:8]}"
    user = urllib.parse.unquote(urllib.parse.urlsplit(url_for_vhost(vhost)).username or "guest")
    management_client.create_vhost(vhost, user)
    url = url_for_vhost(vhost)
    try:
        with Connection(url) as connection:
            apply_topology(connection)
            connection.default_channel.queue_unbind(AUDIT_EVENTS, EVENTS_EXCHANGE, "#")
        yield url
    finally:
        management_client.delete_vhost(vhost)


def test_an_event_nothing_is_bound_for_raises_unroutable(bare_url: str) -> None:
    with EventBus(bare_url, source="lonely-service") as bus:
        with pytest.raises(Unroutable, match="no queue is bound") as caught:
            bus.publish("nobody.listens.here", {"x": 1})
        assert caught.value.routing_key == "nobody.listens.here"
        # When the caller opts in, it is counted and logged instead
        event = bus.publish("nobody.listens.here", {"x": 2}, allow_unroutable=True)
        assert isinstance(event, Event)
        assert bus.unroutable_count == 1
        # A routable event in the same batch as unroutable ones still arrives
        bus.publish_many(
            [("fabrication.print.started", {"n": 1}), ("nobody.listens.here", {"n": 2})],
            allow_unroutable=True,
        )
        assert bus.unroutable_count == 2
    assert queue_counts(bare_url, "fabrication.events")[0] == 1


def test_publish_many_sends_every_event_in_order(amqp_url: str) -> None:
    collector = Collector()
    subscriber = EventBus(amqp_url, source=unique("batch-service"))
    subscriber.connect()
    subscriber.subscribe("probe.batch.*", collector)
    with consuming(subscriber), EventBus(amqp_url, source="batch-publisher") as bus:
        built = Event(event_type="probe.batch.built", data={"n": -1})
        sent = bus.publish_many([built, *(("probe.batch.sent", {"n": i}) for i in range(500))])
        collector.wait_for(lambda events: len(events) == 501)
    assert sent[0].event_id == built.event_id
    assert sent[0].source == "batch-publisher"  # filled in by the bus
    assert collector.ids == [e.event_id for e in sent]


def test_events_are_persistent_with_the_envelope_as_amqp_properties(amqp_url: str) -> None:
    # Given a queue of our own bound for one type
    queue = unique("props")
    with Connection(amqp_url) as connection:
        channel = connection.channel()
        channel.queue_declare(queue, durable=True, auto_delete=False)
        channel.queue_bind(queue, EVENTS_EXCHANGE, "probe.props.sent")
        channel.close()
    # When an event is published the guide's way, with pika properties
    with EventBus(amqp_url, source="props-service") as bus:
        event = bus.publish(
            "probe.props.sent",
            {"k": "v"},
            "req-9",
            properties=pika.BasicProperties(delivery_mode=2),
        )
    [message] = drain(amqp_url, queue)
    # Then the AMQP properties mirror the envelope
    assert message.properties["delivery_mode"] == 2
    assert message.properties["message_id"] == event.event_id
    assert message.properties["correlation_id"] == "req-9"
    assert message.properties["type"] == "probe.props.sent"
    assert message.properties["app_id"] == "props-service"
    assert message.properties["content_type"] == "application/json"
    assert message.properties["timestamp"] == int(event.timestamp.timestamp())
    assert Event.decode(message.body) == event
