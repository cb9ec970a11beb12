"""The event envelope: defaults, validation, JSON body and AMQP properties."""

from __future__ import annotations

import json
import math
import uuid
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest
from pydantic import BaseModel, ValidationError

from events import DecodeError, Event, SchemaError
from events.envelope import CONTENT_TYPE, TRACEPARENT_HEADER

TRACEPARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


def test_defaults_fill_id_version_and_utc_timestamp() -> None:
    # Given only a type and data
    event = Event(event_type="fabrication.print.started", data={"job_id": "print_123"})
    # Then the envelope has a uuid4 id, version 1 and a UTC timestamp of now
    assert uuid.UUID(event.event_id).version == 4
    assert event.version == 1
    assert event.timestamp.tzinfo is not None
    assert event.timestamp.utcoffset() == timedelta(0)
    assert abs(datetime.now(timezone.utc) - event.timestamp) < timedelta(seconds=5)


def test_event_is_frozen() -> None:
    event = Event(event_type="a.b.c")
    with pytest.raises(ValidationError):
        event.event_type = "x.y.z"  # type: ignore[misc]


def test_the_guides_message_design_example_is_a_valid_event() -> None:
    # Given the dict of the guide's "Best Practices 1. Message Design", as written
    message = {
        "event_id": "uuid",
        "event_type": "fabrication.print.started",
        "timestamp": "2025-11-16T12:00:00Z",
        "source": "fabrication-service",
        "correlation_id": "request-uuid",  # For tracing
        "data": {
            "job_id": "print_123",
            "printer_id": "bamboo_h2d",
            "material_id": "pla_black_esun",
        },
    }
    # When it is read as an event
    event = Event.model_validate(message)
    # Then every field is kept and the timestamp is UTC
    assert event.event_id == "uuid"
    assert event.correlation_id == "request-uuid"
    assert event.timestamp == datetime(2025, 11, 16, 12, tzinfo=timezone.utc)
    assert event.data["printer_id"] == "bamboo_h2d"
    assert event.to_dict()["timestamp"] == "2025-11-16T12:00:00Z"


@pytest.mark.parametrize(
    "event_type",
    [
        "",
        "Fabrication.Print.Started",
        "fabrication..started",
        ".fabrication",
        "fabrication.print.",
        "fabrication.*.started",
        "fabrication.#",
        "fabrication print started",
        "a" * 256,
    ],
)
def test_bad_event_types_are_refused_with_the_reason(event_type: str) -> None:
    with pytest.raises(ValidationError, match="lower-case dotted name"):
        Event(event_type=event_type)


def test_non_str_event_type_is_refused() -> None:
    with pytest.raises(ValidationError, match="must be a str"):
        Event(event_type=42)


@pytest.mark.parametrize("event_type", ["fabrication.print.started", "event.type", "event"])
def test_dotted_lower_case_types_are_accepted(event_type: str) -> None:
    assert Event(event_type=event_type).event_type == event_type


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ([1, 2], "data must be a dict"),
        ("text", "data must be a dict"),
        ({"x": math.nan}, r"data\['x'\] is nan"),
        ({"x": [1, math.inf]}, r"data\['x'\]\[1\] is inf"),
        ({"when": datetime(2025, 1, 1)}, r"data\['when'\] is a datetime"),
        ({"tags": {"a", "b"}}, r"data\['tags'\] is a set"),
        ({"blob": b"\x00"}, r"data\['blob'\] is a bytes"),
        ({1: "one"}, "int key 1"),
        ({"nested": {"obj": object()}}, r"data\['nested'\]\['obj'\] is a object"),
    ],
)
def test_non_json_data_is_refused_naming_the_bad_value(data: Any, message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        Event(event_type="a.b.c", data=data)


def test_data_is_copied_so_later_changes_do_not_leak_in() -> None:
    data: dict[str, Any] = {"items": [1, 2]}
    event = Event(event_type="a.b.c", data=data)
    data["items"].append(3)
    assert event.data == {"items": [1, 2]}


def test_naive_timestamps_are_taken_as_utc_and_aware_ones_converted() -> None:
    naive = Event(event_type="a.b.c", timestamp=datetime(2025, 1, 1, 12))
    plus_two = Event(
        event_type="a.b.c", timestamp=datetime(2025, 1, 1, 14, tzinfo=timezone(timedelta(hours=2)))
    )
    assert naive.timestamp == plus_two.timestamp == datetime(2025, 1, 1, 12, tzinfo=timezone.utc)
    assert plus_two.timestamp.utcoffset() == timedelta(0)


def test_traceparent_must_be_w3c() -> None:
    assert Event(event_type="a.b.c", traceparent=TRACEPARENT).traceparent == TRACEPARENT
    with pytest.raises(ValidationError, match="W3C"):
        Event(event_type="a.b.c", traceparent="not-a-trace")


def test_encode_then_decode_gives_the_same_event() -> None:
    event = Event(
        event_type="fabrication.print.completed",
        source="fabrication-service",
        correlation_id="req-1",
        causation_id="ev-0",
        traceparent=TRACEPARENT,
        version=2,
        data={"job_id": "print_123", "success": True, "duration_hours": 3.5, "ünï": ["ok", None]},
    )
    body = event.encode()
    assert json.loads(body)["event_type"] == "fabrication.print.completed"
    assert Event.decode(body) == event


def test_properties_carry_the_envelope_for_amqp_tools() -> None:
    event = Event(event_type="a.b.c", source="svc", correlation_id="req-1", traceparent=TRACEPARENT)
    properties = event.to_properties()
    assert properties["message_id"] == event.event_id
    assert properties["type"] == "a.b.c"
    assert properties["app_id"] == "svc"
    assert properties["correlation_id"] == "req-1"
    assert properties["content_type"] == CONTENT_TYPE
    assert properties["delivery_mode"] == 2
    assert properties["timestamp"] == int(event.timestamp.timestamp())
    assert properties["application_headers"] == {TRACEPARENT_HEADER: TRACEPARENT}


def test_optional_properties_are_left_out_when_unset() -> None:
    properties = Event(event_type="a.b.c").to_properties()
    assert "correlation_id" not in properties
    assert "app_id" not in properties
    assert "application_headers" not in properties


@pytest.mark.parametrize(
    ("body", "kwargs", "message"),
    [
        (b"\x80\x04pickle", {"content_type": "application/x-python-serialize"}, "refused"),
        (b"{not json", {}, "not UTF-8 JSON"),
        (b"\xff\xfe", {}, "not UTF-8 JSON"),
        (b"[1, 2]", {}, "JSON list, not an event"),
        (b'{"event_type": "a.b.c", "data": {"x": NaN}}', {}, "NaN is not valid JSON"),
        (b'{"data": {}}', {}, "event_type: Field required"),
        (b'{"event_type": "A B", "data": {}}', {}, "lower-case dotted"),
        (b'{"event_type": "a.b.c"}', {"content_encoding": "gzip"}, "encoding 'gzip' refused"),
    ],
)
def test_decode_errors_say_why(body: bytes, kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(DecodeError, match=message):
        Event.decode(body, **kwargs)


def test_decode_tolerates_a_missing_content_type_and_unknown_fields() -> None:
    event = Event.decode(
        b'{"event_id": "e-1", "event_type": "a.b.c", "future_field": 1}', content_type=None
    )
    assert event.event_type == "a.b.c"


def test_decode_takes_a_missing_event_id_from_the_message_id_every_time() -> None:
    body = b'{"event_type": "a.b.c"}'
    first = Event.decode(body, message_id="m-1")
    again = Event.decode(body, message_id="m-1")
    assert first.event_id == again.event_id == "m-1"
    # The body's own id wins over the message's
    assert (
        Event.decode(b'{"event_id": "e-1", "event_type": "a.b.c"}', message_id="m-1").event_id
        == "e-1"
    )


def test_decode_refuses_an_event_without_any_id() -> None:
    with pytest.raises(DecodeError, match="neither an event_id in the body nor an AMQP message_id"):
        Event.decode(b'{"event_type": "a.b.c"}')


class PrintStarted(BaseModel):
    job_id: str
    printer_id: str


def test_parse_gives_the_typed_payload() -> None:
    event = Event(event_type="a.b.c", data={"job_id": "j", "printer_id": "p"})
    assert event.parse(PrintStarted) == PrintStarted(job_id="j", printer_id="p")


def test_parse_of_mismatching_data_raises_schema_error() -> None:
    event = Event(event_type="a.b.c", data={"job_id": "j"})
    with pytest.raises(SchemaError, match="printer_id: Field required"):
        event.parse(PrintStarted)


def test_parse_without_a_model_needs_a_registered_schema() -> None:
    with pytest.raises(SchemaError, match="no schema registered"):
        Event(event_type="unregistered.thing.happened").parse()
