"""Operator's view of queues over AMQP: connect with clear errors, exact depths, queue kinds."""

from __future__ import annotations

from dataclasses import dataclass

import amqp
from kombu import Connection

from kitty_tasks.core.errors import KittyError
from kitty_tasks.core.topology import (
    DELAY_PREFIX,
    DLQ_SUFFIX,
    DLX_QUEUE,
    EVENT_QUEUES,
    STREAMS,
    TASK_QUEUES,
    dlq_name,
)

__all__ = [
    "QueueNotFound",
    "QueueStats",
    "is_dead_letter_queue",
    "queue_kind",
    "queue_stats",
    "resolve_dlq",
]


class QueueNotFound(KittyError):
    """The named queue does not exist in the vhost."""


@dataclass(frozen=True)
class QueueStats:
    """Exact ready-message and consumer counts of one queue (from a passive declare)."""

    name: str
    messages: int
    consumers: int


def queue_stats(connection: Connection, name: str) -> QueueStats:
    """Exact depth and consumers of ``name``; ``QueueNotFound`` when it does not exist."""
    channel = connection.connection.channel()
    try:
        _, messages, consumers = channel.queue_declare(name, passive=True)
    except amqp.exceptions.NotFound as err:
        raise QueueNotFound(f"no queue {name!r} in this vhost") from err
    finally:
        # A 404 has already closed the channel on the broker's side.
        if channel.is_open:
            channel.close()
    return QueueStats(name, int(messages), int(consumers))


def is_dead_letter_queue(name: str) -> bool:
    """True for ``<queue>.dlq`` and the catch-all ``dlx.queue``."""
    return name.endswith(DLQ_SUFFIX) or name == DLX_QUEUE


def resolve_dlq(connection: Connection, name: str) -> str:
    """The dead-letter queue ``name`` means: itself, or ``<name>.dlq`` for a work queue."""
    if not is_dead_letter_queue(name):
        candidate = dlq_name(name)
        try:
            queue_stats(connection, candidate)
        except QueueNotFound as err:
            raise QueueNotFound(
                f"{name!r} is not a dead-letter queue (names end in {DLQ_SUFFIX!r} or are "
                f"{DLX_QUEUE!r}) and {candidate!r} does not exist"
            ) from err
        return candidate
    queue_stats(connection, name)
    return name


def queue_kind(name: str) -> str:
    """``task``, ``stream``, ``event``, ``dlq``, ``delay`` or ``other`` (RPC and the rest)."""
    if name in TASK_QUEUES:
        return "task"
    if name in STREAMS:
        return "stream"
    if is_dead_letter_queue(name):
        return "dlq"
    if name.startswith(DELAY_PREFIX):
        return "delay"
    if name in EVENT_QUEUES or name.endswith(".events"):
        return "event"
    return "other"
