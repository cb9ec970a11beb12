"""Exceptions of the event bus; publishing errors are the platform's, re-exported here."""

from __future__ import annotations

from kitty_tasks.core.errors import (
    KittyError,
    PayloadTooLarge,
    Permanent,
    PublishError,
    PublishRejected,
    PublishTimeout,
    Unroutable,
)

__all__ = [
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
]


class EventError(KittyError):
    """Base class of the errors the event bus raises itself."""


class InvalidEvent(EventError, ValueError):
    """An event cannot be built: bad event_type, non-dict or non-JSON data, NaN, ..."""


class DecodeError(EventError, ValueError):
    """A received body is not a JSON event envelope."""


class SchemaError(EventError, ValueError):
    """An event's data does not match the schema registered for its type and version."""


class UnreadableVersion(SchemaError):
    """No registered schema can read this version of the event."""


class NotConnected(EventError, RuntimeError):
    """The bus was used before ``connect()`` (or after ``disconnect()``)."""


class ConfigurationError(EventError, ValueError):
    """A subscription or bus setting is wrong; raised at setup, not at the first message."""
