"""Operator's view of queues over AMQP: connect with clear errors, exact depths, queue kinds."""

from __future__ import annotations

import urllib.parse
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import amqp
from kombu import Connection

from kitty_tasks.errors import KittyError
from kitty_tasks.topology import (
    DELAY_PREFIX,
    DLQ_SUFFIX,
    DLX_QUEUE,
    EVENT_QUEUES,
    TASK_QUEUES,
    dlq_name,
)

__all__ = [
    "BrokerUnavailable",
    "QueueNotFound",
    "QueueStats",
    "is_dead_letter_queue",
    "open_connection",
    "queue_kind",
    "queue_stats",
    "redact",
    "resolve_dlq",
]

#: Seconds to wait for the broker's TCP and AMQP handshake before giving up.
CONNECT_TIMEOUT = 5.0


class BrokerUnavailable(KittyError):
    """The broker cannot be reached at the given URL, or the URL is not a usable AMQP URL."""


class QueueNotFound(KittyError):
    """The named queue does not exist in the vhost."""


@dataclass(frozen=True)
class QueueStats:
    """Exact ready-message and consumer counts of one queue (from a passive declare)."""

    name: str
    messages: int
    consumers: int


def redact(url: str) -> str:
    """``url`` without its password, for messages a user sees."""
    try:
        parts = urllib.parse.urlsplit(url)
    except ValueError:
        return "<unparsable URL>"
    if parts.password is None:
        return url
    netloc = f"{parts.username}:**@{parts.hostname}" + (f":{parts.port}" if parts.port else "")
    return urllib.parse.urlunsplit(parts._replace(netloc=netloc))


@contextmanager
def open_connection(url: str) -> Iterator[Connection]:
    """A connected kombu ``Connection``; ``BrokerUnavailable`` with a one-line reason if not."""
    if "://" not in url:
        raise BrokerUnavailable(
            f"not an AMQP URL: {redact(url)!r} (expected amqp://user:pass@host:port/vhost)"
        )
    try:
        connection = Connection(url, connect_timeout=CONNECT_TIMEOUT)
        # One attempt: an operator wants the error now, not after a retry loop.
        connection.ensure_connection(max_retries=1, interval_start=0, timeout=CONNECT_TIMEOUT)
    except Exception as err:
        reason = str(err) or type(err).__name__
        raise BrokerUnavailable(f"cannot connect to the broker at {redact(url)}: {reason}") from err
    try:
        yield connection
    finally:
        connection.release()


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
    """``task``, ``event``, ``dlq``, ``delay`` or ``other`` (RPC and the rest)."""
    if name in TASK_QUEUES:
        return "task"
    if is_dead_letter_queue(name):
        return "dlq"
    if name.startswith(DELAY_PREFIX):
        return "delay"
    if name in EVENT_QUEUES or name.endswith(".events"):
        return "event"
    return "other"
