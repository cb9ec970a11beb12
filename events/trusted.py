"""Envelopes of events the platform builds itself: written straight to JSON, not validated.

``build_event`` + ``encode`` check every field with pydantic (~46 us an event); a task
lifecycle event is made by the worker from values it controls, so its message is
written directly. Same body fields and order, same AMQP properties: consumers cannot
tell the two paths apart (``tests/unit/test_trusted_envelope.py``).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from events.envelope import CONTENT_ENCODING, CONTENT_TYPE, TRACEPARENT_HEADER
from events.errors import PayloadTooLarge
from kitty_tasks.core.publisher import OutgoingMessage
from kitty_tasks.core.topology import EVENTS_EXCHANGE

__all__ = ["MAX_FIELD_CHARS", "trusted_message"]

#: The envelope's limit on ``source``, ``correlation_id`` and ``event_id``.
MAX_FIELD_CHARS = 255

# Compact UTF-8 JSON as pydantic writes it; NaN and Infinity refused, as the envelope does.
_encoder = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def trusted_message(
    event_type: str,
    data: Mapping[str, Any],
    *,
    event_id: str,
    timestamp: datetime,
    source: str,
    version: int,
    correlation_id: str | None,
    traceparent: str | None,
    user_id: str | None,
    max_bytes: int,
) -> OutgoingMessage:
    """The message ``encode(build_event(...))`` makes, for JSON ``data`` the caller built.

    The caller vouches for the fields (a valid event type, ``timestamp`` in UTC, ``data``
    matching its schema); only what JSON itself refuses raises (``ValueError``), and a body
    over ``max_bytes`` raises ``PayloadTooLarge``. ``user_id`` as ``EventBus`` sends it.
    """
    envelope = {
        "event_id": event_id,
        "event_type": event_type,
        "version": version,
        # pydantic writes a UTC datetime with a Z, isoformat with +00:00.
        "timestamp": timestamp.isoformat().replace("+00:00", "Z"),
        "source": source,
        "correlation_id": correlation_id,
        "causation_id": None,
        "traceparent": traceparent,
        "data": data,
    }
    body = _encoder.encode(envelope).encode()
    if len(body) > max_bytes:
        raise PayloadTooLarge(
            f"event {event_type!r} ({event_id}) is {len(body):,} bytes encoded, "
            f"over the {max_bytes:,}-byte limit (KITTY_MAX_MESSAGE_BYTES); nothing was sent"
        )
    properties: dict[str, Any] = {
        "message_id": event_id,
        "type": event_type,
        "timestamp": int(timestamp.timestamp()),
        "content_type": CONTENT_TYPE,
        "content_encoding": CONTENT_ENCODING,
        "delivery_mode": 2,
    }
    if source:
        properties["app_id"] = source
    if correlation_id is not None:
        properties["correlation_id"] = correlation_id
    if traceparent is not None:
        properties["application_headers"] = {TRACEPARENT_HEADER: traceparent}
    if user_id is not None:
        properties["user_id"] = user_id
    return OutgoingMessage(body, EVENTS_EXCHANGE, event_type, properties)
