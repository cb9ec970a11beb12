"""Handler failures on the real broker: the retry ladder, dead letters, poison bodies."""

from __future__ import annotations

import json

import pytest
from amqp import Message
from kombu import Connection
from pydantic import BaseModel

from events import Event, EventBus, Permanent, SchemaRegistry
from kitty_tasks.core.topology import (
    EVENTS_EXCHANGE,
    H_ATTEMPT,
    H_ATTEMPTS,
    H_ERROR_MESSAGE,
    H_ERROR_TYPE,
    H_FIRST_FAILURE,
    H_LAST_FAILURE,
    H_ORIGINAL_QUEUE,
    H_TRACEBACK,
    delay_exchange_name,
    dlq_name,
)
from tests.helpers import queue_counts
from tests.integration.events_helpers import (
    FAST_BACKOFF,
    Collector,
    consuming,
    drain,
    drain_until,
    unique,
)

pytestmark = pytest.mark.rabbitmq


def fast_bus(url: str, source: str, **kwargs: object) -> EventBus:
    bus = EventBus(url, source=source, retry_backoff_base=FAST_BACKOFF, **kwargs)  # type: ignore[arg-type]
    bus.connect()
    return bus


def test_a_handler_failing_twice_sees_the_event_three_times_and_nobody_else_again(
    amqp_url: str,
) -> None:
    # Given a flaky subscriber (fails twice) and a healthy one on the same pattern
    run = unique("flaky")
    flaky, healthy = Collector(fail_times=2), Collector()
    flaky_bus = fast_bus(amqp_url, f"{run}-flaky")
    flaky_bus.subscribe("fabrication.print.started", flaky)
    healthy_bus = fast_bus(amqp_url, f"{run}-healthy")
    healthy_bus.subscribe("fabrication.print.started", healthy)
    with consuming(flaky_bus), consuming(healthy_bus):
        with EventBus(amqp_url, source="fabrication-service") as publisher:
            event = publisher.publish("fabrication.print.started", {"job_id": run})
            # When the flaky handler has succeeded on its third attempt
            flaky.wait_for(lambda events: len(events) == 3)
            # and a later event reached both (queues are FIFO: no retry can still be pending
            # in front of it in the healthy queue)
            later = publisher.publish("fabrication.print.started", {"job_id": "later"})
        flaky.wait_for_id(later.event_id)
        healthy.wait_for_id(later.event_id)
    # Then the flaky handler saw the same event 3 times, the healthy one once
    assert flaky.ids == [event.event_id] * 3 + [later.event_id]
    assert healthy.ids == [event.event_id, later.event_id]
    assert all(e == event for e in flaky.events[:3])
    # and nothing was dead-lettered
    assert queue_counts(amqp_url, dlq_name(flaky_bus.subscriptions[0].queue))[0] == 0


def test_a_handler_that_always_fails_leaves_the_event_in_its_dlq_with_headers(
    amqp_url: str,
) -> None:
    # Given a handler that always fails, 2 retries allowed
    broken = Collector(fail_times=1000, fail_with=ValueError)
    bus = fast_bus(amqp_url, unique("broken-service"), max_retries=2)
    subscription = bus.subscribe("fabrication.print.failed", broken)
    with consuming(bus), EventBus(amqp_url, source="fabrication-service") as publisher:
        event = publisher.publish("fabrication.print.failed", {"job_id": "j"}, "req-7")
        # When the last attempt failed
        dead = drain_until(amqp_url, subscription.dead_letter_queue, 1)
    # Then it ran 1 + 2 times and its DLQ holds the original event with the reason
    assert broken.ids == [event.event_id] * 3
    assert len(dead) == 1
    letter = dead[0]
    assert Event.decode(letter.body) == event
    assert letter.properties["message_id"] == event.event_id
    assert letter.properties["correlation_id"] == "req-7"
    assert letter.headers[H_ERROR_TYPE] == "ValueError"
    assert letter.headers[H_ERROR_MESSAGE] == "failure 3 of 1000"
    assert "ValueError: failure 3 of 1000" in letter.headers[H_TRACEBACK]
    assert letter.headers[H_ATTEMPTS] == 3
    assert letter.headers[H_ORIGINAL_QUEUE] == subscription.queue
    assert letter.headers[H_FIRST_FAILURE] <= letter.headers[H_LAST_FAILURE]
    assert letter.headers[H_ATTEMPT] == 3
    assert "x-death" not in letter.headers
    # and the subscriber queue is empty (nothing left unacked or waiting)
    assert queue_counts(amqp_url, subscription.queue)[0] == 0


def test_permanent_errors_are_dead_lettered_at_once(amqp_url: str) -> None:
    calls = Collector(fail_times=1000, fail_with=Permanent)
    bus = fast_bus(amqp_url, unique("permanent-service"))
    subscription = bus.subscribe("fabrication.print.rejected", calls)
    with consuming(bus), EventBus(amqp_url, source="fabrication-service") as publisher:
        publisher.publish("fabrication.print.rejected", {"job_id": "j"})
        dead = drain_until(amqp_url, subscription.dead_letter_queue, 1)
    assert len(calls.events) == 1
    assert dead[0].headers[H_ERROR_TYPE] == "Permanent"
    assert dead[0].headers[H_ATTEMPTS] == 1


def publish_raw(url: str, routing_key: str, body: bytes, **properties: object) -> None:
    with Connection(url) as connection:
        channel = connection.channel()
        channel.basic_publish(Message(body, **properties), EVENTS_EXCHANGE, routing_key)
        channel.close()


@pytest.mark.parametrize(
    ("body", "properties", "reason"),
    [
        (b"{not json", {"content_type": "application/json"}, "not UTF-8 JSON"),
        (b"\x80\x04\x95pickle", {"content_type": "application/x-python-serialize"}, "refused"),
        (b'{"event_type": "fabrication.print.bad"}', {"content_type": "text/plain"}, "refused"),
        (b'{"data": {}}', {"content_type": "application/json"}, "event_type: Field required"),
    ],
)
def test_poison_bodies_go_to_the_dlq_with_the_reason_and_the_consumer_keeps_running(
    amqp_url: str, body: bytes, properties: dict[str, object], reason: str
) -> None:
    # Given a running subscriber
    collector = Collector()
    bus = fast_bus(amqp_url, unique("poison-service"))
    subscription = bus.subscribe("fabrication.print.*", collector)
    with consuming(bus):
        # When a poison body arrives, followed by a good event
        publish_raw(amqp_url, "fabrication.print.bad", body, **properties)
        with EventBus(amqp_url, source="fabrication-service") as publisher:
            good = publisher.publish("fabrication.print.good", {"job_id": "j"})
        # Then the good event is handled (the consumer survived) ...
        collector.wait_for_id(good.event_id)
        dead = drain_until(amqp_url, subscription.dead_letter_queue, 1)
    assert collector.ids == [good.event_id]
    # ... and the poison body is in the DLQ, byte for byte, with why
    assert dead[0].body == body
    assert dead[0].headers[H_ERROR_TYPE] == "DecodeError"
    assert reason in dead[0].headers[H_ERROR_MESSAGE]
    assert dead[0].headers[H_ATTEMPTS] == 1


class PrintStartedV1(BaseModel):
    job_id: str
    printer_id: str


class PrintStartedV2(BaseModel):
    job_id: str
    printer_id: str
    material_id: str


def test_schemas_validate_on_consume_newer_readable_versions_delivered(amqp_url: str) -> None:
    # Given a consumer that registered v1 and a producer that knows v2
    consumer_registry, producer_registry = SchemaRegistry(), SchemaRegistry()
    consumer_registry.register("fabrication.print.started", PrintStartedV1, version=1)
    producer_registry.register("fabrication.print.started", PrintStartedV1, version=1)
    producer_registry.register("fabrication.print.started", PrintStartedV2, version=2)
    collector = Collector()
    bus = fast_bus(amqp_url, unique("schema-service"), registry=consumer_registry)
    subscription = bus.subscribe("fabrication.print.started", collector)
    # A producer without schemas can send data that v1 does not accept
    unchecked = EventBus(amqp_url, source="legacy-service", registry=SchemaRegistry())
    with (
        consuming(bus),
        EventBus(amqp_url, source="fabrication-service", registry=producer_registry) as producer,
        unchecked,
    ):
        # When v2 (readable by v1), v1, an invalid v1 and an unreadable v3 arrive
        v2 = producer.publish(
            "fabrication.print.started", {"job_id": "a", "printer_id": "p", "material_id": "m"}
        )
        v1 = producer.publish(
            "fabrication.print.started", {"job_id": "b", "printer_id": "p"}, version=1
        )
        invalid = unchecked.publish("fabrication.print.started", {"job_id": "c"})
        unreadable = unchecked.publish("fabrication.print.started", {"job_id": 3}, version=3)
        last = producer.publish(
            "fabrication.print.started", {"job_id": "d", "printer_id": "p"}, version=1
        )
        collector.wait_for_id(last.event_id)
        dead = drain_until(amqp_url, subscription.dead_letter_queue, 2)
    # Then the handler got v2 and the valid v1s, typed payloads included
    assert v2.version == 2
    assert collector.ids == [v2.event_id, v1.event_id, last.event_id]
    assert collector.events[0].parse(PrintStartedV1).printer_id == "p"
    # and the other two are dead-lettered with the reason
    by_id = {json.loads(d.body)["event_id"]: d.headers for d in dead}
    assert by_id[invalid.event_id][H_ERROR_TYPE] == "SchemaError"
    assert "printer_id: Field required" in by_id[invalid.event_id][H_ERROR_MESSAGE]
    assert by_id[unreadable.event_id][H_ERROR_TYPE] == "UnreadableVersion"
    assert (
        "v3 is newer than the newest registered v1" in by_id[unreadable.event_id][H_ERROR_MESSAGE]
    )


def test_dead_letters_of_a_guide_queue_land_in_its_own_dlq(amqp_url: str) -> None:
    # Given a subscriber on the guide's notifications queue whose handler always fails
    drain(amqp_url, "notifications")
    failing = Collector(fail_times=1000)
    bus = fast_bus(amqp_url, unique("notify"), max_retries=0)
    bus.subscribe("notification.user.#", failing, queue="notifications")
    with consuming(bus), EventBus(amqp_url, source="user-service") as publisher:
        event = publisher.publish("notification.user.created", {"user": "u"})
        dead = drain_until(amqp_url, "notifications.dlq", 1)
    assert json.loads(dead[0].body)["event_id"] == event.event_id
    assert dead[0].headers[H_ORIGINAL_QUEUE] == "notifications"


def test_a_copy_the_broker_refuses_rejects_the_event_into_its_dlq_instead_of_looping(
    ops_url: str,
) -> None:
    # Given a subscriber (in a vhost of its own) whose retry bucket has gone missing
    failing = Collector(fail_times=1000)
    bus = EventBus(
        ops_url, source=unique("no-ladder"), retry_backoff_base=FAST_BACKOFF, declare=False
    )
    bus.connect()
    subscription = bus.subscribe("fabrication.print.stuck", failing)
    bus.declare_queue(subscription.queue, pattern="fabrication.print.stuck")
    with Connection(ops_url) as connection:
        connection.default_channel.exchange_delete(delay_exchange_name(1))
    # When its handler fails, so that the retry copy cannot be published
    with consuming(bus), EventBus(ops_url, source="fabrication-service") as publisher:
        event = publisher.publish("fabrication.print.stuck", {"job_id": "j"})
        dead = drain_until(ops_url, subscription.dead_letter_queue, 1)
    # Then the original was rejected without requeue: the broker dead-lettered it (x-death),
    # the handler ran once, and nothing is left in the queue
    assert failing.ids == [event.event_id]
    assert Event.decode(dead[0].body) == event
    assert dead[0].headers["x-death"][0]["reason"] == "rejected"
    assert dead[0].headers["x-death"][0]["queue"] == subscription.queue
    assert queue_counts(ops_url, subscription.queue)[0] == 0
