"""The RPC wire format: JSON request bodies, method and deadline headers, ok/error replies."""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel

from rpc.errors import (
    BadReply,
    InvalidPayload,
    MalformedRequest,
    ReplyTooLarge,
    RequestTooLarge,
    UnserializableResult,
)

__all__ = [
    "CONTENT_TYPE",
    "DEFAULT_METHOD_LABEL",
    "H_DEADLINE",
    "H_METHOD",
    "REPLY_TO",
    "Reply",
    "authenticated",
    "deadline_passed",
    "decode_reply",
    "decode_request",
    "encode_error",
    "encode_payload",
    "encode_result",
    "expiration_ms",
    "request_headers",
]

#: Direct reply-to pseudo-queue: never declared, consumed no-ack on the publishing channel.
REPLY_TO = "amq.rabbitmq.reply-to"
#: Every request and reply body is JSON; pickle is never accepted.
CONTENT_TYPE = "application/json"
#: Header naming the server method; absent for the server's default handler.
H_METHOD = "x-kitty-rpc-method"
#: Header with the caller's deadline in epoch milliseconds; a server skips requests past it.
H_DEADLINE = "x-kitty-rpc-deadline"
#: The metrics' method label of a call to, and a request for, a server's default handler.
DEFAULT_METHOD_LABEL = "default"

_SEPARATORS = (",", ":")


@dataclass(frozen=True)
class Reply:
    """A decoded reply: ``ok`` with ``result``, or an error ``error_type`` and ``error_message``."""

    ok: bool
    result: Any = None
    error_type: str = ""
    error_message: str = ""


def _dumps(value: Any) -> bytes:
    # allow_nan=False: NaN and Infinity are not JSON, and other languages' parsers reject them.
    return json.dumps(value, separators=_SEPARATORS, allow_nan=False).encode()


def encode_payload(payload: Any, *, max_bytes: int) -> bytes:
    """Encode a payload; raise ``InvalidPayload`` or ``RequestTooLarge`` before sending."""
    if isinstance(payload, BaseModel):
        payload = payload.model_dump(mode="json")
    if not isinstance(payload, dict):
        raise InvalidPayload(
            f"an RPC payload must be a JSON object (dict), not {type(payload).__name__}"
        )
    try:
        body = _dumps(payload)
    except (TypeError, ValueError) as err:
        raise InvalidPayload(f"the RPC payload cannot be encoded as JSON: {err}") from err
    if len(body) > max_bytes:
        raise RequestTooLarge(
            f"the RPC payload is {len(body)} bytes encoded, over the limit of {max_bytes} "
            "(KITTY_MAX_MESSAGE_BYTES)"
        )
    return body


def expiration_ms(timeout: float) -> str:
    """The AMQP ``expiration`` property for a call of ``timeout`` seconds (whole ms, at least 1)."""
    if not timeout > 0 or math.isinf(timeout):
        raise ValueError(f"an RPC timeout must be a positive number of seconds, not {timeout!r}")
    return str(max(1, math.ceil(timeout * 1000)))


def authenticated(user_id: str | None) -> dict[str, str]:
    """The ``user_id`` property for a message sent as broker user ``user_id`` (none if None).

    RabbitMQ refuses a user_id other than the connection's, so a receiver can trust it.
    """
    return {} if user_id is None else {"user_id": user_id}


def request_headers(method: str | None, timeout: float, now: float | None = None) -> dict[str, Any]:
    """Headers of a request: the deadline, and the method when one is named."""
    now = time.time() if now is None else now
    headers: dict[str, Any] = {H_DEADLINE: math.ceil((now + timeout) * 1000)}
    if method is not None:
        headers[H_METHOD] = method
    return headers


def deadline_passed(headers: dict[str, Any] | None, now: float | None = None) -> bool:
    """True when the request's deadline header lies in the past (no header: never)."""
    deadline = (headers or {}).get(H_DEADLINE)
    if not isinstance(deadline, int) or isinstance(deadline, bool):
        return False
    now = time.time() if now is None else now
    return now * 1000 > deadline


def decode_request(body: bytes | str) -> dict[str, Any]:
    """Decode a request body; raise ``MalformedRequest`` unless it is a JSON object."""
    try:
        payload = json.loads(body)
    except (ValueError, TypeError) as err:
        raise MalformedRequest(f"the request body is not valid JSON: {err}") from err
    if not isinstance(payload, dict):
        raise MalformedRequest(
            f"the request body must be a JSON object, not {type(payload).__name__}"
        )
    return payload


def encode_result(result: Any, *, max_bytes: int) -> bytes:
    """Encode an ok reply; raise ``UnserializableResult`` or ``ReplyTooLarge``."""
    if isinstance(result, BaseModel):
        result = result.model_dump(mode="json")
    try:
        body = _dumps({"ok": True, "result": result})
    except (TypeError, ValueError) as err:
        raise UnserializableResult(
            f"the handler's result cannot be encoded as JSON: {err}"
        ) from err
    if len(body) > max_bytes:
        raise ReplyTooLarge(
            f"the handler's result is {len(body)} bytes encoded, over the limit of {max_bytes}"
        )
    return body


def encode_error(error_type: str, message: str) -> bytes:
    """Encode an error reply."""
    return _dumps({"ok": False, "error": {"type": error_type, "message": message}})


def decode_reply(body: bytes | str) -> Reply:
    """Decode a reply body; raise ``BadReply`` when it is not the wire format."""
    try:
        data = json.loads(body)
    except (ValueError, TypeError) as err:
        raise BadReply(f"the reply is not valid JSON: {err}") from err
    if not isinstance(data, dict) or not isinstance(data.get("ok"), bool):
        raise BadReply(f"the reply is not an RPC reply object: {str(data)[:200]}")
    if data["ok"]:
        return Reply(ok=True, result=data.get("result"))
    error = data.get("error")
    if not isinstance(error, dict):
        raise BadReply(f"the error reply has no error object: {str(data)[:200]}")
    return Reply(
        ok=False,
        error_type=str(error.get("type") or "Exception"),
        error_message=str(error.get("message") or ""),
    )
