"""Events from clients of other languages: the id comes from the AMQP message_id, or none at all."""

from __future__ import annotations

import json

import pytest
from amqp import Message
from kombu import Connection

from events import Event, EventBus, MemoryStore, idempotent
from kitty_tasks.core.topology import EVENTS_EXCHANGE, H_ERROR_MESSAGE, H_ERROR_TYPE
from tests.integration.events_helpers import Collector, consuming, drain_until, unique

pytestmark = pytest.mark.rabbitmq

#: An event as a Node.js client writes it: no event_id in the body.
BODY = json.dumps({"event_type": "fabrication.print.started", "data": {"job_id": "j"}}).encode()


def publish_raw(url: str, body: bytes, **properties: object) -> None:
    """Publish ``body`` to ``kitty.events`` as any AMQP client would, with these properties."""
    with Connection(url) as connection:
        channel = connection.channel()
        message = Message(body, content_type="application/json", **properties)
        channel.basic_publish(message, EVENTS_EXCHANGE, "fabrication.print.started")
        channel.close()


def test_an_event_without_event_id_takes_its_message_id_and_is_deduplicated(
    amqp_url: str,
) -> None:
    # Given an idempotent subscriber behind a counter of deliveries
    deliveries, runs = Collector(), Collector()
    handle = idempotent(runs, store=MemoryStore())

    def handler(event: Event) -> None:
        deliveries(event)
        handle(event)

    bus = EventBus(amqp_url, source=unique("foreign-ids"))
    bus.connect()
    bus.subscribe("fabrication.print.started", handler)
    with consuming(bus):
        # When a foreign client sends the same message (one message_id) twice, then another
        publish_raw(amqp_url, BODY, message_id="node-42")
        publish_raw(amqp_url, BODY, message_id="node-42")
        publish_raw(amqp_url, BODY, message_id="node-43")
        deliveries.wait_for(lambda events: len(events) == 3)
    # Then both copies carry the message_id as their event id, and the handler ran once for it
    assert deliveries.ids == ["node-42", "node-42", "node-43"]
    assert runs.ids == ["node-42", "node-43"]


def test_an_event_with_neither_id_is_dead_lettered_with_the_reason(amqp_url: str) -> None:
    # Given a running subscriber
    collector = Collector()
    bus = EventBus(amqp_url, source=unique("foreign-no-id"))
    bus.connect()
    subscription = bus.subscribe("fabrication.print.started", collector)
    with consuming(bus):
        # When an event arrives with no event_id and no message_id, then a good one
        publish_raw(amqp_url, BODY)
        publish_raw(amqp_url, BODY, message_id="node-44")
        collector.wait_for_id("node-44")
        dead = drain_until(amqp_url, subscription.dead_letter_queue, 1)
    # Then only the good one reached the handler, and the other is in the DLQ with why
    assert collector.ids == ["node-44"]
    assert dead[0].body == BODY
    assert dead[0].headers[H_ERROR_TYPE] == "DecodeError"
    assert (
        "neither an event_id in the body nor an AMQP message_id" in dead[0].headers[H_ERROR_MESSAGE]
    )
