"""The worker's own lifecycle envelopes equal what the events layer builds, field by field."""

from __future__ import annotations

import json
import math
from datetime import datetime, timezone
from typing import Any

import pytest

from events import Event, TaskCompleted, TaskFailed, default_registry
from events.errors import PayloadTooLarge
from events.publishing import build_event, encode
from events.trusted import trusted_message
from kitty_tasks.core.publisher import OutgoingMessage
from kitty_tasks.runtime.lifecycle_data import error_data, summarise_result

TRACEPARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
COMPLETED: dict[str, Any] = {
    "task_id": "5b0c4c1e-1111-4a3f-9d7e-000000000001",
    "task": "research.paper",
    "queue": "research.tasks",
    "attempts": 2,
    "runtime": 1.5e-07,
    **summarise_result({"title": "Über Katzen", "pages": [1, 2.5, None, True]}, 1_000_000),
}
FAILED: dict[str, Any] = {
    "task_id": "5b0c4c1e-1111-4a3f-9d7e-000000000002",
    "task": "cad.generate",
    "queue": "cad.tasks",
    "attempts": 1,
    "runtime": 0.25,
    "error": error_data(ValueError("mesh is not closed")),
}


def both(
    event_type: str,
    data: dict[str, Any],
    *,
    timestamp: datetime,
    traceparent: str | None = None,
    user_id: str | None = "research-worker",
) -> tuple[OutgoingMessage, OutgoingMessage]:
    """(events layer's message, trusted message) of one event, with the same id and time."""
    fields: dict[str, Any] = {
        "source": "research@host-1",
        "version": default_registry.latest(event_type) or 1,
        "correlation_id": data["task_id"],
    }
    event = build_event(
        event_type,
        data,
        registry=default_registry,
        traceparent=traceparent,
        event_id="e-1",
        **fields,
    )
    event = event.model_copy(update={"timestamp": timestamp})
    extra = {} if user_id is None else {"user_id": user_id}
    checked = encode(event, extra, max_bytes=1_000_000)
    trusted = trusted_message(
        event_type,
        data,
        event_id="e-1",
        timestamp=timestamp,
        traceparent=traceparent,
        user_id=user_id,
        max_bytes=1_000_000,
        **fields,
    )
    return checked, trusted


@pytest.mark.parametrize(
    ("event_type", "data"),
    [
        ("research.task.completed", COMPLETED),
        ("cad.task.dead_lettered", FAILED),
        ("brain.task.failed", FAILED),
    ],
)
@pytest.mark.parametrize(
    "timestamp",
    [
        datetime(2026, 11, 30, 13, 1, 2, 123456, tzinfo=timezone.utc),
        datetime(2026, 11, 30, 13, 1, 2, tzinfo=timezone.utc),  # no fraction: no ".000000"
    ],
)
@pytest.mark.parametrize(
    ("traceparent", "user_id"),
    [(None, None), (None, "research-worker"), (TRACEPARENT, None), (TRACEPARENT, "guest")],
)
def test_a_trusted_message_decodes_to_the_event_the_events_layer_builds(
    event_type: str,
    data: dict[str, Any],
    timestamp: datetime,
    traceparent: str | None,
    user_id: str | None,
) -> None:
    checked, trusted = both(
        event_type, data, timestamp=timestamp, traceparent=traceparent, user_id=user_id
    )

    # Same route and AMQP properties (message_id, type, timestamp, content type and
    # encoding, persistence, app_id, correlation_id, traceparent header, user_id)
    assert (trusted.exchange, trusted.routing_key) == (checked.exchange, checked.routing_key)
    assert trusted.properties == checked.properties
    # The body decodes with the envelope model, to the same event field by field
    properties = trusted.properties
    decoded = Event.decode(
        trusted.body,
        content_type=properties["content_type"],
        content_encoding=properties["content_encoding"],
        message_id=properties["message_id"],
    )
    assert decoded.to_dict() == Event.decode(checked.body).to_dict()
    # And its data validates against the lifecycle schema
    model = TaskCompleted if event_type.endswith(".completed") else TaskFailed
    assert isinstance(decoded.parse(), model)
    # The JSON keys come in the envelope's order (as pydantic writes them)
    assert list(json.loads(trusted.body)) == list(json.loads(checked.body))


def test_the_body_is_the_same_text_apart_from_float_notation() -> None:
    data = {**COMPLETED, "runtime": 0.125}
    timestamp = datetime(2026, 11, 30, 13, 1, 2, 5, tzinfo=timezone.utc)

    checked, trusted = both("research.task.completed", data, timestamp=timestamp)

    assert trusted.body == checked.body


def test_what_json_cannot_carry_is_refused_as_the_events_layer_refuses_it() -> None:
    data = {**COMPLETED, "result": math.nan}

    with pytest.raises(ValueError, match="JSON"):
        _completed_now(data, max_bytes=1_000_000)


def test_an_event_over_the_size_limit_is_refused() -> None:
    with pytest.raises(PayloadTooLarge, match="over the 100-byte limit"):
        _completed_now(COMPLETED, max_bytes=100)


def _completed_now(data: dict[str, Any], *, max_bytes: int) -> Any:
    """A trusted ``research.task.completed`` message of ``data``, stamped now."""
    return trusted_message(
        "research.task.completed",
        data,
        event_id="e-1",
        timestamp=datetime.now(timezone.utc),
        source="research@host-1",
        version=1,
        correlation_id=None,
        traceparent=None,
        user_id=None,
        max_bytes=max_bytes,
    )
