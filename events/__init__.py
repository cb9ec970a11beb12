"""Typed events over the ``kitty.events`` topic exchange: envelope, bus, schemas, idempotency."""

from __future__ import annotations

from events.bus import EventBus
from events.envelope import Event
from events.errors import (
    BrokerUnavailable,
    ConfigurationError,
    DecodeError,
    EventError,
    InvalidEvent,
    NotConnected,
    PayloadTooLarge,
    Permanent,
    PublishError,
    PublishRejected,
    PublishTimeout,
    SchemaError,
    UnreadableVersion,
    Unroutable,
)
from events.idempotency import IdempotencyStore, MemoryStore, SQLiteStore, idempotent
from events.schemas import SchemaRegistry, default_registry, register_schema
from events.subscriptions import EventHandler, Subscription
from events.task_events import TaskCompleted, TaskError, TaskFailed, task_event_type

__all__ = [
    "BrokerUnavailable",
    "ConfigurationError",
    "DecodeError",
    "Event",
    "EventBus",
    "EventError",
    "EventHandler",
    "IdempotencyStore",
    "InvalidEvent",
    "MemoryStore",
    "NotConnected",
    "PayloadTooLarge",
    "Permanent",
    "PublishError",
    "PublishRejected",
    "PublishTimeout",
    "SQLiteStore",
    "SchemaError",
    "SchemaRegistry",
    "Subscription",
    "TaskCompleted",
    "TaskError",
    "TaskFailed",
    "UnreadableVersion",
    "Unroutable",
    "default_registry",
    "idempotent",
    "register_schema",
    "task_event_type",
]
