"""EventBus checks that need no broker: configuration, bad input, size limit, routing."""

from __future__ import annotations

import time
from typing import Any

import pika
import pytest
from kombu import Connection

from events import (
    ConfigurationError,
    EventBus,
    InvalidEvent,
    NotConnected,
    PayloadTooLarge,
    PublishError,
    SchemaError,
    SchemaRegistry,
)
from events.publishing import PUBLISH_RETRIES, PublisherPool, caller_properties
from events.routing import check_pattern, topic_matches
from kitty_tasks.core import errors as core_errors
from kitty_tasks.core.publisher import OutgoingMessage
from kitty_tasks.core.settings import Settings

URL = "amqp://guest:guest@127.0.0.1:1//"  # nothing listens: any I/O would fail loudly


def bus(**kwargs: Any) -> EventBus:
    return EventBus(URL, source="test-service", registry=SchemaRegistry(), **kwargs)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ([1, 2, 3], "data must be a dict"),
        ({"x": float("nan")}, "is nan"),
        ({"x": {1, 2}}, "is a set"),
    ],
)
def test_bad_data_raises_invalid_event_before_connecting(data: Any, message: str) -> None:
    with pytest.raises(InvalidEvent, match=message):
        bus().publish("fabrication.print.started", data)


def test_bad_event_type_raises_invalid_event() -> None:
    with pytest.raises(InvalidEvent, match="lower-case dotted name"):
        bus().publish("Fabrication Print Started", {})


def test_oversized_payload_raises_before_anything_is_sent() -> None:
    # Given a 1 KiB limit, when a 2 KB event is published on an unconnected bus,
    # then the size error comes first: nothing was even attempted on the wire
    small = bus(max_message_bytes=1024)
    with pytest.raises(PayloadTooLarge, match="over the 1,024-byte limit"):
        small.publish("fabrication.print.started", {"blob": "x" * 2000})


def test_default_size_limit_comes_from_the_settings() -> None:
    settings = Settings(KITTY_MAX_MESSAGE_BYTES=4096)
    assert EventBus(URL, source="s", settings=settings).max_message_bytes == 4096


def test_publish_before_connect_says_so() -> None:
    with pytest.raises(NotConnected, match=r"call bus.connect\(\)"):
        bus().publish("fabrication.print.started", {"job_id": "j"})


def test_start_consuming_before_connect_says_so() -> None:
    with pytest.raises(NotConnected):
        bus().start_consuming()


def test_subscribe_validates_pattern_and_handler_at_once() -> None:
    with pytest.raises(ConfigurationError, match="not a topic pattern"):
        bus().subscribe("Fabrication.#", print)
    with pytest.raises(ConfigurationError, match="handler must be callable"):
        bus().subscribe("fabrication.#", "not callable")  # type: ignore[arg-type]


def test_subscribe_without_source_needs_an_explicit_queue() -> None:
    anonymous = EventBus(URL)
    with pytest.raises(ConfigurationError, match="source="):
        anonymous.subscribe("fabrication.#", print)
    assert anonymous.subscribe("fabrication.#", print, queue="my.queue").queue == "my.queue"


def test_subscriber_queue_is_named_by_the_template() -> None:
    subscription = bus().subscribe("fabrication.print.#", print)
    assert subscription.queue == "test-service.fabrication.print.all.events"
    assert subscription.dead_letter_queue == "test-service.fabrication.print.all.events.dlq"


def test_one_handler_per_queue() -> None:
    b = bus()
    b.subscribe("fabrication.#", print, queue="q")
    with pytest.raises(ConfigurationError, match="already has a subscription"):
        b.subscribe("cad.#", print, queue="q")


def test_schema_is_checked_on_publish() -> None:
    from pydantic import BaseModel

    class Started(BaseModel):
        job_id: str

    registry = SchemaRegistry()
    registry.register("fabrication.print.started", Started)
    b = EventBus(URL, source="s", registry=registry)
    with pytest.raises(SchemaError, match="job_id: Field required"):
        b.publish("fabrication.print.started", {"printer": "p"})
    # A model instance is accepted as data and dumped to JSON
    assert b.event("fabrication.print.started", Started(job_id="j")).data == {"job_id": "j"}


def test_constructor_rejects_nonsense() -> None:
    with pytest.raises(ConfigurationError):
        EventBus(URL, source="")
    with pytest.raises(ConfigurationError):
        EventBus(URL, source="s", prefetch_count=0)
    with pytest.raises(ConfigurationError):
        EventBus(URL, source="s", max_retries=-1)


def test_pika_properties_are_read_and_envelope_ones_refused() -> None:
    assert caller_properties(pika.BasicProperties(delivery_mode=2)) == {"delivery_mode": 2}
    assert caller_properties({"priority": 5, "headers": {"k": "v"}}) == {
        "priority": 5,
        "application_headers": {"k": "v"},
    }
    with pytest.raises(InvalidEvent, match="message_id are set by the event envelope"):
        caller_properties(pika.BasicProperties(message_id="mine"))
    with pytest.raises(InvalidEvent, match="delivery_mode must be 1 or 2"):
        caller_properties({"delivery_mode": 3})


@pytest.mark.parametrize(
    ("pattern", "key", "matches"),
    [
        ("fabrication.#", "fabrication.print.started", True),
        ("fabrication.#", "fabrication", True),
        ("fabrication.print.#", "fabrication.printer.offline", False),
        ("fabrication.print.completed", "fabrication.print.completed", True),
        ("fabrication.print.completed", "fabrication.print.started", False),
        ("*.print.*", "fabrication.print.started", True),
        ("*.print.*", "fabrication.print", False),
        ("#", "anything.at.all", True),
        ("#.completed", "research.task.completed", True),
    ],
)
def test_topic_matching_follows_rabbitmq(pattern: str, key: str, matches: bool) -> None:
    assert topic_matches(pattern, key) is matches


def test_check_pattern() -> None:
    assert check_pattern("fabrication.*.#") == "fabrication.*.#"
    with pytest.raises(ValueError, match="not a topic pattern"):
        check_pattern("fabrication..#")


def test_a_publish_whose_connection_cannot_be_remade_gives_up_with_publish_error() -> None:
    # Given a publisher pool whose broker is gone (nothing listens at URL)
    pool = PublisherPool(Connection(URL), limit=1, url=URL, management_url="http://127.0.0.1:1")
    message = OutgoingMessage(b"{}", "kitty.events", "fabrication.print.started")
    # When an event is published, Then it is retried a bounded number of times with the
    # reconnect backoff, then PublishError names the broker without its password
    started = time.monotonic()
    with pytest.raises(PublishError, match=rf"127\.0\.0\.1:1//? after {PUBLISH_RETRIES + 1} tries"):
        pool.publish([message], allow_unroutable=False, timeout=1.0)
    assert time.monotonic() - started < 15
    pool.close()


def test_the_bus_raises_the_platforms_own_configuration_and_connection_errors() -> None:
    # Catching the core's errors catches the bus's: there is one of each
    with pytest.raises(core_errors.ConfigurationError):
        EventBus(URL, source="")
    with pytest.raises(core_errors.NotConnected):
        bus().publish("fabrication.print.started", {})
    with pytest.raises(core_errors.BrokerUnavailable, match=r"amqp://guest:\*\*@127\.0\.0\.1:1"):
        bus().connect(max_retries=1)
