"""Replay the audit stream by time: read its events from a timestamp, or republish them."""

from __future__ import annotations

import contextlib
import time
import uuid
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any

import amqp
from kombu import Connection

from events.envelope import Event
from events.errors import ConfigurationError, DecodeError
from events.window import ReplayWindow
from kitty_tasks.core.connection import connected
from kitty_tasks.core.errors import KittyError, TopologyError
from kitty_tasks.core.publisher import ConfirmedPublisher, OutgoingMessage
from kitty_tasks.core.topology import (
    AUDIT_EVENTS,
    DELAY_PREFIX,
    DLQ_SUFFIX,
    DLX_QUEUE,
    H_REPLAYED_FROM,
    H_STREAM_MARKER,
    TOPOLOGY,
    QueueSpec,
)

__all__ = [
    "ReplayError",
    "ReplayStats",
    "ReplayWindow",
    "StoredEvent",
    "read_stream",
    "replay_events",
    "republish",
]

#: Events carry their publisher's clock and stream chunks the broker's, and a timestamp
#: offset starts at a chunk: reading from this long before ``since`` keeps an event whose
#: clocks disagree by less. Events before ``since`` are then dropped by their own time.
CLOCK_SLACK = timedelta(minutes=5)
#: Deliveries the broker sends ahead of acks; a stream consumer must set a prefetch.
PREFETCH = 500
#: No delivery for this long although the end marker is confirmed: the read is stuck.
STALL_SECONDS = 60.0
#: Events republished per confirm wait.
BATCH = 200
#: Type of the empty message a replay appends to the stream to know where it ends.
MARKER_TYPE = "kitty.stream.marker"
#: Header the broker adds to each delivery from a stream; not part of the event.
_OFFSET_HEADER = "x-stream-offset"


class ReplayError(KittyError):
    """A replay could not read the stream to its end."""


@dataclass(frozen=True)
class StoredEvent:
    """An event as the stream holds it: decoded, its offset, and its message as published."""

    event: Event
    offset: int
    body: bytes
    properties: dict[str, Any]


@dataclass
class ReplayStats:
    """What a replay read: messages, matches, undecodable bodies and republished events."""

    read: int = 0
    matched: int = 0
    undecodable: int = 0
    republished: int = 0


def _stream_spec(stream: str) -> QueueSpec:
    """The topology's stream called ``stream``; ``ConfigurationError`` for anything else."""
    try:
        spec = TOPOLOGY.queue(stream)
    except KeyError:
        spec = None
    if spec is None or not spec.is_stream:
        raise ConfigurationError(
            f"{stream!r} is not a stream of the topology (try {AUDIT_EVENTS!r})"
        )
    return spec


def _body_bytes(message: amqp.Message) -> bytes:
    # py-amqp hands over a body with a content encoding already decoded to str.
    body = message.body
    if isinstance(body, str):
        return body.encode(str(message.properties.get("content_encoding") or "utf-8"))
    return bytes(body)


def _check_stream(connection: Connection, spec: QueueSpec) -> None:
    # Declaring with the topology's exact arguments fails on a classic queue of that name;
    # reading a classic queue with acks would consume the old audit log away.
    raw = connection.connection
    channel = raw.channel()
    try:
        channel.queue_declare(spec.name, passive=True)
        channel.queue_declare(spec.name, durable=True, auto_delete=False, arguments=spec.arguments)
    except amqp.exceptions.NotFound:
        raise TopologyError(
            f"no stream {spec.name!r} in this vhost (run: kitty-tasks topology apply)"
        ) from None
    except amqp.exceptions.PreconditionFailed as err:
        raise TopologyError(
            f"{spec.name!r} is not the stream the topology declares ({err}); a classic queue "
            "from before the audit log became a stream must be drained and deleted, then "
            "`kitty-tasks topology apply` (docs/events.md)"
        ) from None
    finally:
        if channel.is_open:
            channel.close()


def _mark_end(connection: Connection, stream: str) -> str:
    # Streams on AMQP 0-9-1 report no length (a passive declare says 0), and the management
    # API's count lags: a confirmed marker is a position nothing published before it follows.
    marker = uuid.uuid4().hex
    properties = {
        "message_id": marker,
        "type": MARKER_TYPE,
        "delivery_mode": 2,
        "application_headers": {H_STREAM_MARKER: marker},
    }
    publisher = ConfirmedPublisher(connection)
    try:
        publisher.publish(OutgoingMessage(b"", "", stream, properties))
    finally:
        publisher.close()
    return marker


def _deliveries(connection: Connection, stream: str, start: datetime) -> Iterator[amqp.Message]:
    raw = connection.connection
    channel = raw.channel()
    arrived: deque[amqp.Message] = deque()
    channel.basic_qos(0, PREFETCH, False)
    tag = channel.basic_consume(
        stream, callback=arrived.append, arguments={_OFFSET_HEADER: start}, no_ack=False
    )
    unacked, idle_since = 0, time.monotonic()
    try:
        while True:
            while not arrived:
                try:
                    raw.drain_events(timeout=1.0)
                except TimeoutError:
                    if time.monotonic() - idle_since > STALL_SECONDS:
                        raise ReplayError(
                            f"{stream!r} delivered nothing for {STALL_SECONDS:g}s before "
                            "its end marker"
                        ) from None
            idle_since = time.monotonic()
            message = arrived.popleft()
            unacked += 1
            # Acks return credit: the broker sends the next deliveries only after them.
            if unacked >= PREFETCH // 2:
                channel.basic_ack(message.delivery_tag, multiple=True)
                unacked = 0
            yield message
    finally:
        with contextlib.suppress(Exception):  # the connection may be gone with an error
            # Cancelled first: deliveries still in flight then reach the callback, not a
            # closing channel (py-amqp warns about each of those).
            channel.basic_cancel(tag)
            channel.close()


def read_stream(
    url: str, window: ReplayWindow, *, stream: str = AUDIT_EVENTS, stats: ReplayStats | None = None
) -> Iterator[StoredEvent]:
    """Yield the stream's events in ``window``, in stream order, up to its end at the start.

    Other messages in the stream (undecodable bodies, other replays' end markers) are
    skipped and counted in ``stats``.
    """
    spec = _stream_spec(stream)
    stats = stats if stats is not None else ReplayStats()
    with connected(url) as connection:
        _check_stream(connection, spec)
        marker = _mark_end(connection, spec.name)
        for message in _deliveries(connection, spec.name, window.since - CLOCK_SLACK):
            headers = dict(message.properties.get("application_headers") or {})
            if H_STREAM_MARKER in headers:
                if headers[H_STREAM_MARKER] == marker:
                    return
                continue
            stats.read += 1
            try:
                event = Event.decode(
                    message.body,
                    content_type=message.properties.get("content_type"),
                    content_encoding=message.properties.get("content_encoding"),
                )
            except DecodeError:
                stats.undecodable += 1
                continue
            if not window.selects(event.event_type, event.timestamp):
                continue
            stats.matched += 1
            offset = int(headers.pop(_OFFSET_HEADER, -1))
            properties = {**message.properties, "application_headers": headers}
            yield StoredEvent(event, offset, _body_bytes(message), properties)


def replay_events(
    url: str,
    *,
    since: str | datetime | timedelta,
    until: str | datetime | timedelta | None = None,
    pattern: str = "#",
    stream: str = AUDIT_EVENTS,
    stats: ReplayStats | None = None,
) -> Iterator[Event]:
    """Yield the events of ``stream`` stamped in [since, until) whose type matches ``pattern``.

    ``since``/``until`` take datetimes, timedeltas ago, or strings (``10m``, ISO 8601);
    ``until`` defaults to now. Inputs are checked before the broker is contacted.
    """
    window = ReplayWindow.build(since, until, pattern)
    _stream_spec(stream)
    return (stored.event for stored in read_stream(url, window, stream=stream, stats=stats))


def _check_target(connection: Connection, queue: str, stream: str = AUDIT_EVENTS) -> None:
    """Raise ``ConfigurationError`` unless ``queue`` is an existing queue events may go to."""
    if queue == stream:
        raise ConfigurationError(
            f"--to-queue {queue!r} is the stream itself: pick a subscriber queue"
        )
    if queue.endswith(DLQ_SUFFIX) or queue == DLX_QUEUE or queue.startswith(DELAY_PREFIX):
        raise ConfigurationError(
            f"--to-queue {queue!r} is a dead-letter or retry queue: pick a subscriber queue"
        )
    channel = connection.connection.channel()
    try:
        channel.queue_declare(queue, passive=True)
    except amqp.exceptions.NotFound:
        raise ConfigurationError(f"no queue {queue!r} in this vhost") from None
    finally:
        if channel.is_open:
            channel.close()


def _republished(stored: StoredEvent, queue: str, stream: str) -> OutgoingMessage:
    properties = dict(stored.properties)
    stamp = properties.get("timestamp")
    if isinstance(stamp, datetime):
        # py-amqp reads the timestamp property as a naive UTC datetime but writes only ints.
        properties["timestamp"] = int(stamp.replace(tzinfo=timezone.utc).timestamp())
    properties["application_headers"] = {
        **properties.get("application_headers", {}),
        H_REPLAYED_FROM: stream,
    }
    # The default exchange routes by queue name: this queue only, no other subscriber.
    return OutgoingMessage(stored.body, "", queue, properties)


def republish(
    url: str,
    queue: str,
    *,
    since: str | datetime | timedelta,
    until: str | datetime | timedelta | None = None,
    pattern: str = "#",
    stream: str = AUDIT_EVENTS,
    stats: ReplayStats | None = None,
) -> ReplayStats:
    """Republish the window's events into ``queue`` alone, with confirms; returns the counts.

    Each keeps its body, ``message_id`` (the ``event_id``) and properties, plus the
    ``x-kitty-replayed-from`` header, so ``@idempotent`` handlers skip events they have seen.
    """
    window = ReplayWindow.build(since, until, pattern)
    _stream_spec(stream)
    stats = stats if stats is not None else ReplayStats()
    with connected(url) as connection:
        _check_target(connection, queue, stream)
        publisher = ConfirmedPublisher(connection)
        try:
            batch: list[OutgoingMessage] = []
            for stored in read_stream(url, window, stream=stream, stats=stats):
                batch.append(_republished(stored, queue, stream))
                if len(batch) >= BATCH:
                    publisher.publish_batch(batch)
                    stats.republished += len(batch)
                    batch = []
            if batch:
                publisher.publish_batch(batch)
                stats.republished += len(batch)
        finally:
            publisher.close()
    return stats
