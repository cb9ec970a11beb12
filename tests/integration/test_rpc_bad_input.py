"""Malformed request bodies reaching a server: error replies, dead letters, and serving on."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import amqp
import pytest
from kombu import Connection

from kitty_tasks.core.topology import (
    H_ATTEMPTS,
    H_ERROR_MESSAGE,
    H_ERROR_TYPE,
    H_ORIGINAL_QUEUE,
    RPC_EXCHANGE,
    dlq_name,
)
from rpc import REPLY_TO, RPCClient, RPCServer
from rpc.protocol import H_METHOD
from tests.helpers import wait_for
from tests.integration.rpc_support import service_name, serving

pytestmark = pytest.mark.rabbitmq


@pytest.fixture
def echo_service(amqp_url: str) -> Iterator[str]:
    """A running server whose default handler echoes the request."""
    service = service_name("echo")
    server = RPCServer(amqp_url, service, concurrency=2)
    server.register_handler(lambda request: request)
    with serving(server):
        yield service


def _raw_request(amqp_url: str, service: str, body: bytes) -> dict[str, Any]:
    """Publish ``body`` as-is with a direct reply-to address; return the decoded reply."""
    replies: list[amqp.Message] = []
    with Connection(amqp_url) as connection:
        channel = connection.default_channel
        channel.basic_consume(REPLY_TO, no_ack=True, callback=replies.append)
        message = amqp.Message(body, reply_to=REPLY_TO, correlation_id="raw-1")
        channel.basic_publish(message, RPC_EXCHANGE, service)
        connection.drain_events(timeout=30)
    assert replies, "no reply came"
    assert replies[0].properties["correlation_id"] == "raw-1"
    return dict(json.loads(replies[0].body))


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b"{not json", "not valid JSON"),
        (b"[1, 2, 3]", "must be a JSON object"),
        (b"\xff\xfe", "not valid JSON"),
    ],
)
def test_a_malformed_body_gets_an_error_reply_and_the_server_serves_on(
    amqp_url: str, echo_service: str, body: bytes, reason: str
) -> None:
    reply = _raw_request(amqp_url, echo_service, body)
    assert reply["ok"] is False
    assert reply["error"]["type"] == "MalformedRequest"
    assert reason in reply["error"]["message"]
    with RPCClient(amqp_url) as client:
        assert client.call(echo_service, {"still": "serving"}, timeout=5) == {"still": "serving"}


def test_a_malformed_body_without_reply_to_is_dead_lettered_with_why(
    amqp_url: str, echo_service: str
) -> None:
    with Connection(amqp_url) as connection:
        channel = connection.default_channel
        channel.basic_publish(amqp.Message(b"garbage"), RPC_EXCHANGE, echo_service)
        # The server keeps serving, and the bad request reaches the DLQ
        with RPCClient(amqp_url) as client:
            assert client.call(echo_service, {"n": 1}, timeout=5) == {"n": 1}
        dead = wait_for(
            lambda: channel.basic_get(dlq_name(echo_service), no_ack=True),
            30,
            what="the malformed request in the DLQ",
        )
    assert dead.body == b"garbage"
    assert dead.headers[H_ERROR_TYPE] == "MalformedRequest"
    assert dead.headers[H_ORIGINAL_QUEUE] == echo_service


def test_a_failing_request_without_reply_to_is_dead_lettered_like_any_failed_message(
    amqp_url: str,
) -> None:
    # Given a method that fails, called by a publisher that waits for no reply
    service = service_name("fails")
    server = RPCServer(amqp_url, service)

    def fail(request: dict[str, Any]) -> None:
        raise ValueError("no good")

    server.add_method("fail", fail)
    request = amqp.Message(
        b'{"n": 1}', correlation_id="c-1", application_headers={H_METHOD: "fail"}
    )
    with serving(server), Connection(amqp_url) as connection:
        channel = connection.default_channel
        channel.basic_publish(request, RPC_EXCHANGE, service)
        # Then the request lands in the service's DLQ with the platform's failure headers
        dead = wait_for(
            lambda: channel.basic_get(dlq_name(service), no_ack=True),
            30,
            what="the failed request in the DLQ",
        )
    assert dead.body == b'{"n": 1}'
    assert dead.headers[H_ERROR_TYPE] == "ValueError"
    assert dead.headers[H_ERROR_MESSAGE] == "no good"
    assert dead.headers[H_ATTEMPTS] == 1
    assert dead.headers[H_ORIGINAL_QUEUE] == service
    assert dead.headers[H_METHOD] == "fail"
    assert dead.properties["correlation_id"] == "c-1"


def test_an_oversized_request_is_refused_before_decoding_and_the_server_serves_on(
    amqp_url: str, echo_service: str
) -> None:
    # Given a raw client that bypasses RPCClient's size check with a 2 MiB request
    body = json.dumps({"x": "a" * 2 * 1024 * 1024}).encode()
    # Then its caller is told why, and the server goes on serving
    reply = _raw_request(amqp_url, echo_service, body)
    assert reply["ok"] is False
    assert reply["error"]["type"] == "MessageTooLarge"
    assert "KITTY_MAX_MESSAGE_BYTES" in reply["error"]["message"]
    with RPCClient(amqp_url) as client:
        assert client.call(echo_service, {"n": 2}, timeout=5) == {"n": 2}


def test_an_oversized_request_without_reply_to_is_dead_lettered_with_why(
    amqp_url: str, echo_service: str
) -> None:
    body = json.dumps({"x": "a" * 2 * 1024 * 1024}).encode()
    with Connection(amqp_url) as connection:
        channel = connection.default_channel
        channel.basic_publish(amqp.Message(body), RPC_EXCHANGE, echo_service)
        dead = wait_for(
            lambda: channel.basic_get(dlq_name(echo_service), no_ack=True),
            30,
            what="the oversized request in the DLQ",
        )
    assert dead.headers[H_ERROR_TYPE] == "MessageTooLarge"
    assert "over the 1,048,576-byte limit" in dead.headers[H_ERROR_MESSAGE]
