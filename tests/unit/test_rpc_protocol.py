"""RPC wire format and caller-side validation, without a broker."""

from __future__ import annotations

import json
import math

import pytest
from pydantic import BaseModel

from kitty_tasks.core.errors import PayloadTooLarge
from rpc import InvalidPayload, NotConnected, RequestTooLarge, RPCClient, RPCServer, RPCTimeout
from rpc.errors import BadReply, MalformedRequest, ReplyTooLarge, UnserializableResult
from rpc.protocol import (
    H_DEADLINE,
    H_METHOD,
    REPLY_TO,
    Reply,
    deadline_passed,
    decode_reply,
    decode_request,
    encode_error,
    encode_payload,
    encode_result,
    expiration_ms,
    request_headers,
)


class Point(BaseModel):
    """A pydantic payload."""

    x: int
    y: int


def test_direct_reply_to_is_rabbitmqs_pseudo_queue() -> None:
    assert REPLY_TO == "amq.rabbitmq.reply-to"


def test_a_payload_encodes_as_compact_json() -> None:
    assert encode_payload({"a": 5, "b": 3}, max_bytes=100) == b'{"a":5,"b":3}'


def test_a_pydantic_payload_is_dumped_as_json() -> None:
    assert json.loads(encode_payload(Point(x=1, y=2), max_bytes=100)) == {"x": 1, "y": 2}


@pytest.mark.parametrize("payload", [[1, 2], "text", 3, None])
def test_a_payload_that_is_not_an_object_is_refused(payload: object) -> None:
    with pytest.raises(InvalidPayload, match="must be a JSON object"):
        encode_payload(payload, max_bytes=100)


@pytest.mark.parametrize("payload", [{"when": object()}, {"x": math.nan}, {"s": {1, 2}}])
def test_a_payload_that_is_not_json_is_refused(payload: dict[str, object]) -> None:
    with pytest.raises(InvalidPayload, match="cannot be encoded as JSON"):
        encode_payload(payload, max_bytes=100)


def test_a_payload_over_the_limit_is_refused_with_its_size() -> None:
    with pytest.raises(RequestTooLarge, match=r"is 2011 bytes encoded, over the limit of 2000"):
        encode_payload({"blob": "x" * 2000}, max_bytes=2000)


def test_request_too_large_is_also_the_platforms_payload_too_large() -> None:
    with pytest.raises(PayloadTooLarge):
        encode_payload({"blob": "x" * 50}, max_bytes=10)


def test_expiration_is_the_timeout_in_whole_milliseconds() -> None:
    assert expiration_ms(30) == "30000"
    assert expiration_ms(0.0001) == "1"
    assert expiration_ms(1.5) == "1500"


@pytest.mark.parametrize("timeout", [0, -1, math.inf, math.nan])
def test_a_timeout_must_be_positive_and_finite(timeout: float) -> None:
    with pytest.raises(ValueError, match="positive number of seconds"):
        expiration_ms(timeout)


def test_headers_carry_the_deadline_and_the_method() -> None:
    headers = request_headers("add", 2.0, now=1000.0)
    assert headers == {H_DEADLINE: 1_002_000, H_METHOD: "add"}
    assert H_METHOD not in request_headers(None, 2.0, now=1000.0)


def test_a_deadline_passes_only_after_it() -> None:
    headers = request_headers(None, 1.0, now=1000.0)
    assert not deadline_passed(headers, now=1000.5)
    assert deadline_passed(headers, now=1001.01)
    assert not deadline_passed({}, now=1e12)
    assert not deadline_passed({H_DEADLINE: "soon"}, now=1e12)


@pytest.mark.parametrize(
    ("body", "reason"),
    [(b"not json", "not valid JSON"), (b"[1, 2]", "must be a JSON object"), (b"\xff", "not valid")],
)
def test_a_malformed_request_body_is_refused(body: bytes, reason: str) -> None:
    with pytest.raises(MalformedRequest, match=reason):
        decode_request(body)


def test_an_ok_reply_round_trips() -> None:
    body = encode_result({"result": 8}, max_bytes=1000)
    assert json.loads(body) == {"ok": True, "result": {"result": 8}}
    assert decode_reply(body) == Reply(ok=True, result={"result": 8})


def test_an_error_reply_round_trips() -> None:
    body = encode_error("ValueError", "bad")
    assert json.loads(body) == {"ok": False, "error": {"type": "ValueError", "message": "bad"}}
    assert decode_reply(body) == Reply(ok=False, error_type="ValueError", error_message="bad")


def test_a_pydantic_result_is_dumped() -> None:
    assert decode_reply(encode_result(Point(x=1, y=2), max_bytes=1000)).result == {"x": 1, "y": 2}


def test_an_unserialisable_result_is_an_error_not_a_crash() -> None:
    with pytest.raises(UnserializableResult, match="cannot be encoded as JSON"):
        encode_result({"at": object()}, max_bytes=1000)


def test_a_result_over_the_limit_is_refused() -> None:
    with pytest.raises(ReplyTooLarge, match="over the limit of 100"):
        encode_result("x" * 200, max_bytes=100)


@pytest.mark.parametrize("body", [b"nope", b"[]", b'{"result": 1}', b'{"ok": false}'])
def test_a_reply_that_is_not_the_wire_format_is_a_bad_reply(body: bytes) -> None:
    with pytest.raises(BadReply):
        decode_reply(body)


def test_the_client_validates_the_payload_before_needing_a_connection() -> None:
    # Given a client that was never connected: validation fails first, so nothing could be sent.
    client = RPCClient("amqp://guest:guest@localhost:5672//", max_message_bytes=100)
    with pytest.raises(InvalidPayload):
        client.call("math.rpc", ["a", "list"])  # type: ignore[arg-type]
    with pytest.raises(RequestTooLarge):
        client.call("math.rpc", {"blob": "x" * 200})
    with pytest.raises(ValueError, match="positive"):
        client.call("math.rpc", {"a": 1}, timeout=0)
    with pytest.raises(NotConnected, match="connect"):
        client.call("math.rpc", {"a": 1})


def test_rpc_timeout_is_a_timeout_error() -> None:
    assert issubclass(RPCTimeout, TimeoutError)


def test_a_server_checks_its_arguments_at_once() -> None:
    with pytest.raises(ValueError, match="service name"):
        RPCServer("amqp://localhost//", "")
    with pytest.raises(ValueError, match="concurrency"):
        RPCServer("amqp://localhost//", "math.rpc", concurrency=0)
    with pytest.raises(ValueError, match="name"):
        RPCServer("amqp://localhost//", "math.rpc").add_method("", lambda r: r)
