"""The event envelope: a frozen pydantic model, its JSON body and its AMQP properties."""

from __future__ import annotations

import json
import math
import re
import uuid
from datetime import datetime, timezone
from typing import Any, TypeVar, overload

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    ValidationInfo,
    field_validator,
)

from events.errors import DecodeError, SchemaError, validation_summary
from events.routing import EVENT_TYPE_PATTERN, check_event_type
from events.schemas import SchemaRegistry, default_registry

__all__ = [
    "CONTENT_TYPE",
    "EVENT_TYPE_PATTERN",
    "TRACEPARENT_HEADER",
    "Event",
    "check_event_type",
    "check_json_object",
    "validation_summary",
]

#: The only body format: JSON, UTF-8. Pickle and friends are refused on receipt.
CONTENT_TYPE = "application/json"
CONTENT_ENCODING = "utf-8"
#: W3C trace context: version-traceid-parentid-flags.
TRACEPARENT_PATTERN = re.compile(r"^[0-9a-f]{2}-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}$")
#: AMQP header carrying the W3C trace context, so that tracers need not parse the body.
TRACEPARENT_HEADER = "traceparent"

ModelT = TypeVar("ModelT", bound=BaseModel)


def _json_value(value: Any, path: str) -> Any:
    # Checked by hand rather than by json.dumps so that the error names the bad value's path.
    if value is None or isinstance(value, (bool, str, int)):
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"{path} is {value!r}: JSON has no NaN or Infinity")
        return value
    if isinstance(value, dict):
        result: dict[str, Any] = {}
        for key, item in value.items():
            if not isinstance(key, str):
                raise ValueError(
                    f"{path} has a {type(key).__name__} key {key!r}: JSON keys are str"
                )
            result[key] = _json_value(item, f"{path}[{key!r}]")
        return result
    if isinstance(value, (list, tuple)):
        return [_json_value(item, f"{path}[{i}]") for i, item in enumerate(value)]
    raise ValueError(
        f"{path} is a {type(value).__name__}, which is not JSON "
        "(use str, int, float, bool, None, list or dict; e.g. datetime.isoformat())"
    )


def check_json_object(data: object) -> dict[str, Any]:
    """A deep copy of ``data`` if it is a JSON object (dict of JSON values), else ``ValueError``."""
    if not isinstance(data, dict):
        raise ValueError(f"data must be a dict (a JSON object), got {type(data).__name__}")
    checked: dict[str, Any] = _json_value(data, "data")
    return checked


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"{text} is out of range for a JSON number")
    return value


#: Validation context of ``Event.decode``: ``data`` comes from ``json.loads`` with NaN,
#: Infinity and out-of-range numbers refused, so it is JSON already and needs no second walk.
_FROM_JSON = {"from_json": True}


class Event(BaseModel):
    """One event: who said what happened, when, and the JSON data of it."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    event_id: str = Field(default_factory=lambda: str(uuid.uuid4()), min_length=1, max_length=255)
    event_type: str
    version: int = Field(1, ge=1)
    timestamp: datetime = Field(default_factory=lambda: datetime.now(timezone.utc))
    source: str = Field("", max_length=255)
    correlation_id: str | None = Field(None, max_length=255)
    causation_id: str | None = Field(None, max_length=255)
    traceparent: str | None = None
    data: dict[str, Any] = Field(default_factory=dict)
    # Not part of the body: the broker user that published it, from the AMQP user_id.
    _publisher: str | None = PrivateAttr(default=None)

    @field_validator("event_type", mode="before")
    @classmethod
    def _check_type(cls, value: object) -> str:
        return check_event_type(value)

    @field_validator("data", mode="before")
    @classmethod
    def _check_data(cls, value: object, info: ValidationInfo) -> dict[str, Any]:
        if info.context is _FROM_JSON and isinstance(value, dict):
            return value
        return check_json_object(value)

    @field_validator("timestamp")
    @classmethod
    def _utc(cls, value: datetime) -> datetime:
        # A naive time is taken as UTC: every producer of this platform writes UTC.
        if value.tzinfo is None:
            return value.replace(tzinfo=timezone.utc)
        return value.astimezone(timezone.utc)

    @field_validator("traceparent")
    @classmethod
    def _check_traceparent(cls, value: str | None) -> str | None:
        if value is not None and not TRACEPARENT_PATTERN.match(value):
            raise ValueError(f"traceparent {value!r} is not a W3C trace context")
        return value

    @property
    def publisher(self) -> str | None:
        """Broker user that published this event (AMQP ``user_id``, checked by the broker)."""
        return self._publisher

    def published_by(self, user: str | None) -> Event:
        """This event as received from broker user ``user`` (a copy; the body is unchanged)."""
        received = self.model_copy()
        received._publisher = user
        return received

    def __eq__(self, other: object) -> bool:
        # The envelope alone: a received event equals the one sent, whoever published it.
        if not isinstance(other, Event):
            return NotImplemented
        return self.__dict__ == other.__dict__

    def __hash__(self) -> int:
        return hash(self.event_id)

    def to_dict(self) -> dict[str, Any]:
        """The envelope as JSON-ready values (timestamp as ISO 8601, UTC)."""
        return self.model_dump(mode="json")

    def encode(self) -> bytes:
        """The message body: compact UTF-8 JSON."""
        # pydantic's own serializer writes the same compact UTF-8 JSON as json.dumps of
        # to_dict() (floats may differ in notation only, e.g. 1.5e-7 for 1.5e-07) at a fifth
        # of the cost; data holds JSON values only (checked on construction), so no NaN.
        return self.__pydantic_serializer__.to_json(self)

    def to_properties(self) -> dict[str, Any]:
        """AMQP properties of the message that carries this event (persistent)."""
        properties: dict[str, Any] = {
            "message_id": self.event_id,
            "type": self.event_type,
            "timestamp": int(self.timestamp.timestamp()),
            "content_type": CONTENT_TYPE,
            "content_encoding": CONTENT_ENCODING,
            "delivery_mode": 2,
        }
        if self.source:
            properties["app_id"] = self.source
        if self.correlation_id is not None:
            properties["correlation_id"] = self.correlation_id
        if self.traceparent is not None:
            properties["application_headers"] = {TRACEPARENT_HEADER: self.traceparent}
        return properties

    @classmethod
    def decode(
        cls,
        body: bytes | str,
        *,
        content_type: str | None = CONTENT_TYPE,
        content_encoding: str | None = CONTENT_ENCODING,
        message_id: str | None = None,
    ) -> Event:
        """Rebuild an event from a message body; ``DecodeError`` says why it cannot be.

        A body without ``event_id`` takes the AMQP ``message_id``; with neither, it is refused.
        """
        # A missing content type is tolerated (hand-published messages); any other is refused,
        # so a pickle body is never even parsed.
        if content_type and content_type != CONTENT_TYPE:
            raise DecodeError(f"content type {content_type!r} refused: events are {CONTENT_TYPE}")
        if content_encoding and content_encoding.lower().replace("-", "") not in {"utf8", "binary"}:
            raise DecodeError(f"content encoding {content_encoding!r} refused: events are UTF-8")
        try:
            text = body.decode(CONTENT_ENCODING) if isinstance(body, bytes) else body
            payload = json.loads(text, parse_constant=_reject_constant, parse_float=_finite_float)
        except (UnicodeDecodeError, ValueError) as err:
            raise DecodeError(f"body is not UTF-8 JSON: {err}") from err
        except RecursionError as err:
            # Thousands of nested arrays: without this the bus requeues the body forever.
            raise DecodeError("body is JSON nested too deeply to decode") from err
        if not isinstance(payload, dict):
            raise DecodeError(f"body is a JSON {type(payload).__name__}, not an event object")
        missing_id = "event_id" not in payload
        if missing_id and message_id:
            # A fresh uuid per decode would give each redelivery another id, and
            # @idempotent could never recognise it: the id must come from the message.
            payload["event_id"] = message_id
        try:
            event = cls.model_validate(payload, context=_FROM_JSON)
        except ValidationError as err:
            raise DecodeError(f"body is not an event envelope: {validation_summary(err)}") from err
        if missing_id and not message_id:
            raise DecodeError(
                "event has no id: neither an event_id in the body nor an AMQP message_id, "
                "so a redelivery could not be recognised; set either"
            )
        return event

    @overload
    def parse(self, model: type[ModelT], *, registry: SchemaRegistry | None = None) -> ModelT: ...

    @overload
    def parse(self, model: None = None, *, registry: SchemaRegistry | None = None) -> BaseModel: ...

    def parse(
        self, model: type[BaseModel] | None = None, *, registry: SchemaRegistry | None = None
    ) -> BaseModel:
        """``data`` as ``model`` (default: the schema registered for this type and version)."""
        if model is None:
            model = (registry or default_registry).model_for(self.event_type, self.version)
            if model is None:
                raise SchemaError(
                    f"no schema registered for {self.event_type!r} that reads version "
                    f"{self.version}; pass the model: event.parse(Model)"
                )
        try:
            return model.model_validate(self.data)
        except ValidationError as err:
            raise SchemaError(
                f"data of {self.event_type!r} v{self.version} does not match "
                f"{model.__name__}: {validation_summary(err)}"
            ) from err
