"""An event delivery's fate without a broker: handled, retried, dead-lettered or rejected."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from prometheus_client import REGISTRY
from pydantic import BaseModel

from events import Event, Permanent, SchemaError, SchemaRegistry
from events.delivery import EventDelivery, current_event
from events.subscriptions import EventHandler
from kitty_tasks.core.failure import FailurePolicy
from kitty_tasks.core.publisher import OutgoingMessage
from kitty_tasks.core.topology import (
    DLX_EXCHANGE,
    H_ATTEMPT,
    H_ATTEMPTS,
    H_ERROR_MESSAGE,
    H_ERROR_TYPE,
    H_ORIGINAL_QUEUE,
)
from tests.unit.amqp_stubs import UNCONFIRMED, StubChannel, StubPublish, delivery

MAX_RETRIES = 2


class Subscriber:
    """One subscription's delivery decision over stubs, with what it did in one timeline."""

    def __init__(
        self,
        handler: EventHandler,
        *,
        publish: StubPublish | None = None,
        registry: SchemaRegistry | None = None,
        verify_source: bool = False,
        own_user: str | None = None,
    ) -> None:
        self.queue = f"test-service.{uuid.uuid4().hex[:8]}.events"
        self.timeline: list[tuple[Any, ...]] = []
        self.publish = publish or StubPublish()
        self.publish.timeline = self.timeline
        self.channel = StubChannel(self.timeline)
        policy = FailurePolicy(self.publish, max_retries=MAX_RETRIES, backoff_base=0.1)
        self.deliver = EventDelivery(
            self.queue,
            handler,
            registry or SchemaRegistry(),
            policy,
            verify_source=verify_source,
            own_user=own_user,
        )

    def receive(self, body: bytes, *, attempt: int | None = None, **properties: Any) -> None:
        """Deliver ``body`` (on its ``attempt``) and let the decision settle it."""
        headers = {} if attempt is None else {H_ATTEMPT: attempt}
        message = delivery(body, channel=self.channel, headers=headers, **properties)
        self.deliver(message, lambda m: m.ack())

    def receive_event(
        self, event: Event, *, attempt: int | None = None, user_id: str | None = None
    ) -> None:
        """Deliver ``event`` as the bus publishes it (as broker user ``user_id``)."""
        properties = event.to_properties()
        properties.pop("application_headers", None)
        if user_id is not None:
            properties["user_id"] = user_id
        self.receive(event.encode(), attempt=attempt, **properties)

    @property
    def copy(self) -> OutgoingMessage:
        """The one retry or dead-letter copy published."""
        return self.publish.copy

    def failed(self, outcome: str, event_type: str) -> float:
        """``kitty_events_failed`` of this subscription's queue."""
        labels = {"event_type": event_type, "queue": self.queue, "outcome": outcome}
        return REGISTRY.get_sample_value("kitty_events_failed_total", labels) or 0.0


def event(**data: Any) -> Event:
    return Event(event_type="fabrication.print.started", source="fabrication", data=data)


def failing(exc: Exception) -> EventHandler:
    def handler(event: Event) -> None:
        raise exc

    return handler


def test_a_handled_event_is_acked_and_nothing_is_copied() -> None:
    seen: list[Event] = []
    subscriber = Subscriber(seen.append)
    sent = event(job_id="j1")
    subscriber.receive_event(sent)
    assert seen == [sent]
    assert subscriber.timeline == [("ack", 1, False)]
    consumed = {"event_type": sent.event_type, "queue": subscriber.queue}
    assert REGISTRY.get_sample_value("kitty_events_consumed_total", consumed) == 1


def test_a_failure_with_attempts_left_is_retried_to_its_own_queue_then_acked() -> None:
    # Given a handler that fails, on the event's first delivery
    subscriber = Subscriber(failing(RuntimeError("printer offline")))
    subscriber.receive_event(event(job_id="j1"))
    # Then a copy goes through the delay ladder, routed back to this queue only, as attempt 2,
    # and the original is acked only after that copy was published (confirmed)
    assert subscriber.timeline == [
        ("publish", subscriber.copy.exchange, subscriber.queue),
        ("ack", 1, False),
    ]
    assert subscriber.copy.exchange.startswith("kitty.delay.")
    assert subscriber.copy.properties["application_headers"][H_ATTEMPT] == 2
    assert subscriber.copy.properties["application_headers"][H_ORIGINAL_QUEUE] == subscriber.queue
    assert subscriber.failed("retried", "fabrication.print.started") == 1


def test_the_last_attempt_is_dead_lettered_with_the_reason_then_acked() -> None:
    subscriber = Subscriber(failing(ValueError("bad nozzle")))
    sent = event(job_id="j1")
    subscriber.receive_event(sent, attempt=MAX_RETRIES + 1)
    assert subscriber.timeline == [("publish", DLX_EXCHANGE, subscriber.queue), ("ack", 1, False)]
    headers = subscriber.copy.properties["application_headers"]
    assert headers[H_ERROR_TYPE] == "ValueError"
    assert headers[H_ERROR_MESSAGE] == "bad nozzle"
    assert headers[H_ATTEMPTS] == MAX_RETRIES + 1
    assert Event.decode(subscriber.copy.body) == sent
    assert subscriber.copy.properties["message_id"] == sent.event_id
    assert subscriber.failed("dead_lettered", sent.event_type) == 1


class Job(BaseModel):
    job_id: str


@pytest.mark.parametrize(
    "exc",
    [
        Permanent("job cancelled"),
        SchemaError("no job_id"),
        pytest.param(None, id="ValidationError"),
    ],
)
def test_errors_no_retry_can_fix_are_dead_lettered_at_once(exc: Exception | None) -> None:
    def handler(event: Event) -> None:
        if exc is not None:
            raise exc
        Job.model_validate(event.data)  # raises pydantic's ValidationError

    subscriber = Subscriber(handler)
    subscriber.receive_event(event(printer="p"))
    assert subscriber.timeline == [("publish", DLX_EXCHANGE, subscriber.queue), ("ack", 1, False)]
    assert subscriber.copy.properties["application_headers"][H_ATTEMPTS] == 1


@pytest.mark.parametrize(
    ("body", "content_type", "reason"),
    [
        (b"{not json", "application/json", "not UTF-8 JSON"),
        (b"\x80\x04\x95pickle", "application/x-python-serialize", "refused"),
        (b"[" * 10_000 + b"]" * 10_000, "application/json", "nested too deeply"),
        (b'{"data": {}}', "application/json", "event_type: Field required"),
    ],
)
def test_an_undecodable_body_is_dead_lettered_with_the_reason_byte_for_byte(
    body: bytes, content_type: str, reason: str
) -> None:
    handled: list[Event] = []
    subscriber = Subscriber(handled.append)
    subscriber.receive(body, content_type=content_type, type="fabrication.print.bad")
    assert handled == []
    assert subscriber.timeline == [("publish", DLX_EXCHANGE, subscriber.queue), ("ack", 1, False)]
    assert subscriber.copy.body == body
    headers = subscriber.copy.properties["application_headers"]
    assert headers[H_ERROR_TYPE] == "DecodeError"
    assert reason in headers[H_ERROR_MESSAGE]
    assert subscriber.failed("dead_lettered", "fabrication.print.bad") == 1


def test_data_failing_its_schema_is_dead_lettered_without_reaching_the_handler() -> None:
    registry = SchemaRegistry()
    registry.register("fabrication.print.started", Job)
    handled: list[Event] = []
    subscriber = Subscriber(handled.append, registry=registry)
    subscriber.receive_event(event(printer="p"))
    assert handled == []
    headers = subscriber.copy.properties["application_headers"]
    assert (subscriber.copy.exchange, headers[H_ERROR_TYPE]) == (DLX_EXCHANGE, "SchemaError")
    assert "job_id: Field required" in headers[H_ERROR_MESSAGE]


@pytest.mark.parametrize("attempt", [1, MAX_RETRIES + 1], ids=["retry", "dead letter"])
def test_an_unconfirmed_copy_rejects_the_original_without_requeue(attempt: int) -> None:
    # Given a broker that does not confirm the copy (dlx or the ladder unavailable)
    subscriber = Subscriber(
        failing(RuntimeError("boom")), publish=StubPublish(fail_with=UNCONFIRMED)
    )
    # When the handler fails
    subscriber.receive_event(event(job_id="j1"), attempt=attempt)
    # Then the original is rejected, not requeued: the broker dead-letters it (x-death), no loop
    assert subscriber.timeline == [("reject", 1, False)]
    assert subscriber.failed("rejected", "fabrication.print.started") == 1


def test_an_unexpected_error_of_the_bus_rejects_the_original_without_requeue() -> None:
    # Given a bus whose publishing fails with something that is no PublishError
    def publish_on_a_closed_bus(messages: object) -> None:
        raise RuntimeError("the bus was disconnected")

    channel = StubChannel()
    policy = FailurePolicy(publish_on_a_closed_bus, max_retries=MAX_RETRIES)
    deliver = EventDelivery("q", failing(RuntimeError("boom")), SchemaRegistry(), policy)
    # When a handler fails, Then the original is rejected to its DLQ rather than looping
    deliver(delivery(event().encode(), channel=channel), lambda m: m.ack())
    assert channel.timeline == [("reject", 1, False)]


def test_events_published_by_a_handler_know_the_event_in_hand() -> None:
    seen: list[Event | None] = []
    subscriber = Subscriber(lambda event: seen.append(current_event.get()))
    sent = event(job_id="j1")
    subscriber.receive_event(sent)
    assert seen == [sent]
    assert current_event.get() is None


def claiming(source: str) -> Event:
    return Event(event_type="fabrication.print.started", source=source, data={})


def test_the_handler_sees_the_publishing_user() -> None:
    seen: list[Event] = []
    subscriber = Subscriber(seen.append)
    subscriber.receive_event(claiming("fabrication-service"), user_id="fabrication")
    assert [e.publisher for e in seen] == ["fabrication"]
    subscriber.receive_event(claiming("fabrication-service"))
    assert seen[-1].publisher is None


@pytest.mark.parametrize(
    ("user_id", "source", "reason"),
    [
        ("fabrication", "cad-service", "published by broker user 'fabrication'"),
        (None, "fabrication-service", "carries no user_id"),
        ("audit", "fabrication-service", "belongs to fabrication"),
    ],
)
def test_verify_source_dead_letters_a_source_its_publisher_may_not_claim(
    user_id: str | None, source: str, reason: str
) -> None:
    seen: list[Event] = []
    subscriber = Subscriber(seen.append, verify_source=True, own_user="audit")
    subscriber.receive_event(claiming(source), user_id=user_id)
    assert seen == []
    assert subscriber.timeline == [("publish", DLX_EXCHANGE, subscriber.queue), ("ack", 1, False)]
    headers = subscriber.copy.properties["application_headers"]
    assert headers[H_ERROR_TYPE] == "UnverifiedSource"
    assert reason in headers[H_ERROR_MESSAGE]


def test_verify_source_accepts_its_own_retry_copy_only() -> None:
    # A retry copy comes back signed by the subscriber's own user, with the attempt header
    seen: list[Event] = []
    subscriber = Subscriber(seen.append, verify_source=True, own_user="audit")
    subscriber.receive_event(claiming("fabrication-service"), attempt=2, user_id="audit")
    assert len(seen) == 1
    # The same user without the attempt header is checked like anyone else
    subscriber.receive_event(claiming("fabrication-service"), user_id="audit")
    assert len(seen) == 1
    assert subscriber.copy.properties["application_headers"][H_ERROR_TYPE] == "UnverifiedSource"
