"""Events and RPC requests carry the connection's user as AMQP user_id; the broker checks it."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator

import amqp
import pytest
from kombu import Connection

from events import Event, EventBus
from kitty_tasks.core.connection import user_of
from kitty_tasks.core.publisher import ConfirmedPublisher, OutgoingMessage
from kitty_tasks.core.topology import EVENTS_EXCHANGE, RPC_EXCHANGE
from rpc import RPCClient
from tests.helpers import wait_for


@pytest.fixture
def tap(amqp_url: str) -> Iterator[tuple[amqp.Channel, str, str]]:
    """A private queue bound to authcheck.# events and an RPC service: (channel, queue, service)."""
    service = f"auth-{uuid.uuid4().hex[:8]}"
    with Connection(amqp_url) as connection:
        channel = connection.channel()
        queue, _, _ = channel.queue_declare("", exclusive=True)
        channel.queue_bind(queue, EVENTS_EXCHANGE, "authcheck.#")
        channel.queue_bind(queue, RPC_EXCHANGE, service)
        yield channel, queue, service
        channel.close()


def next_message(channel: amqp.Channel, queue: str) -> amqp.Message:
    found: list[amqp.Message] = []

    def got() -> bool:
        message = channel.basic_get(queue, no_ack=True)
        if message is not None:
            found.append(message)
        return bool(found)

    wait_for(got, timeout=10, what=f"a message in {queue}")
    return found[0]


def test_an_event_carries_the_connection_user_and_the_subscriber_sees_it(
    amqp_url: str, tap: tuple[amqp.Channel, str, str]
) -> None:
    channel, queue, _ = tap
    user = user_of(amqp_url)
    assert user
    with EventBus(amqp_url, source="auth-test") as bus:
        sent = bus.publish("authcheck.thing.happened", {"n": 1})
    message = next_message(channel, queue)
    assert message.properties["user_id"] == user
    received = Event.decode(message.body).published_by(message.properties.get("user_id"))
    # The publisher is delivery metadata: the envelope is unchanged and equal to the one sent
    assert received.publisher == user
    assert received == sent
    assert "user_id" not in received.to_dict()
    assert sent.publisher is None


def test_an_event_published_from_asyncio_carries_the_connection_user(
    amqp_url: str, tap: tuple[amqp.Channel, str, str]
) -> None:
    channel, queue, _ = tap

    async def publish() -> Event:
        with EventBus(amqp_url, source="auth-test") as bus:
            return await bus.apublish("authcheck.thing.happened", {"n": 2})

    sent = asyncio.run(publish())
    message = next_message(channel, queue)
    assert message.properties["user_id"] == user_of(amqp_url)
    assert Event.decode(message.body) == sent


def test_an_event_bus_without_a_user_in_its_url_sends_no_user_id() -> None:
    bus = EventBus("amqp://localhost:5672//", source="auth-test")
    assert bus.user_id is None


def test_rpc_requests_carry_the_connection_user(
    amqp_url: str, tap: tuple[amqp.Channel, str, str]
) -> None:
    channel, queue, service = tap
    with RPCClient(amqp_url) as client:
        future = client.call_async(service, {"x": 1}, timeout=5)
        message = next_message(channel, queue)
        future.cancel()
    assert message.properties["user_id"] == user_of(amqp_url)


def test_the_broker_refuses_a_user_id_that_is_not_the_connections(amqp_url: str) -> None:
    # What makes user_id trustworthy: nobody can publish as another user
    forged = OutgoingMessage(
        b"{}", EVENTS_EXCHANGE, "authcheck.forged", {"user_id": "someone-else"}
    )
    with Connection(amqp_url) as connection:
        publisher = ConfirmedPublisher(connection)
        with pytest.raises(Exception, match=r"PRECONDITION_FAILED.*user_id"):
            publisher.publish_batch([forged], allow_unroutable=True)
