"""Exceptions of the event bus; the platform's own (publishing, setup) are re-exported here."""

from __future__ import annotations

from pydantic import ValidationError

from kitty_tasks.core.errors import (
    BrokerUnavailable,
    ConfigurationError,
    KittyError,
    NotConnected,
    PayloadTooLarge,
    Permanent,
    PublishError,
    PublishRejected,
    PublishTimeout,
    Unroutable,
)

__all__ = [
    "BrokerUnavailable",
    "ConfigurationError",
    "DecodeError",
    "EventError",
    "InvalidEvent",
    "NotConnected",
    "PayloadTooLarge",
    "Permanent",
    "PublishError",
    "PublishRejected",
    "PublishTimeout",
    "SchemaError",
    "UnreadableVersion",
    "Unroutable",
    "UnverifiedSource",
    "validation_summary",
]


class EventError(KittyError):
    """Base class of the errors only the event bus raises."""


class InvalidEvent(EventError, ValueError):
    """An event cannot be built: bad event_type, non-dict or non-JSON data, NaN, ..."""


class DecodeError(EventError, ValueError):
    """A received body is not a JSON event envelope."""


class SchemaError(EventError, ValueError):
    """An event's data does not match the schema registered for its type and version."""


class UnreadableVersion(SchemaError):
    """No registered schema can read this version of the event."""


class UnverifiedSource(EventError):
    """The event's ``source`` is not one its publishing broker user may claim."""


def validation_summary(err: ValidationError) -> str:
    """A one-line account of a pydantic error: ``field: message; ...``."""
    parts = []
    for item in err.errors()[:5]:
        where = ".".join(str(p) for p in item["loc"]) or "(root)"
        parts.append(f"{where}: {item['msg'].removeprefix('Value error, ')}")
    more = err.error_count() - len(parts)
    return "; ".join(parts) + (f"; and {more} more" if more > 0 else "")
