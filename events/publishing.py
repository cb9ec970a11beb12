"""Publishing events: size-checked encoding, pooled confirm channels, naming the full queue."""

from __future__ import annotations

import functools
import logging
import weakref
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any, cast

from kombu.connection import Connection
from kombu.exceptions import OperationalError
from pydantic import ValidationError

from events.envelope import Event
from events.errors import (
    InvalidEvent,
    NotConnected,
    PayloadTooLarge,
    PublishError,
    PublishRejected,
    validation_summary,
)
from events.routing import topic_matches
from events.schemas import SchemaRegistry
from kitty_tasks.core import tracing
from kitty_tasks.core.connection import RECONNECT, safe_url, vhost_of
from kitty_tasks.core.management import ManagementClient
from kitty_tasks.core.metrics import EVENTS_PUBLISHED, EVENTS_UNROUTABLE
from kitty_tasks.core.publisher import ConfirmedPublisher, OutgoingMessage, PublishResult
from kitty_tasks.core.topology import EVENTS_EXCHANGE, TOPOLOGY

__all__ = [
    "DEFAULT_POOL_LIMIT",
    "NOT_CONNECTED",
    "PUBLISH_RETRIES",
    "PublisherPool",
    "build_event",
    "caller_properties",
    "encode",
    "end_sends",
    "start_sends",
]

logger = logging.getLogger(__name__)

#: Pooled connections for publishing; a thread holds one only while it publishes.
DEFAULT_POOL_LIMIT = 8
#: Times a publish is tried again after the connection broke under it (so 4 tries in all).
PUBLISH_RETRIES = 3
#: Properties a caller may set through ``publish(properties=...)``; the envelope owns the rest.
_CALLER_PROPERTIES = ("delivery_mode", "priority", "expiration", "reply_to", "headers")

NOT_CONNECTED = "the EventBus is not connected: call bus.connect() or use `with EventBus(...)`"
LOG_UNROUTABLE = "%d event(s) of type %s had no queue bound (allow_unroutable): %s"
LOG_PUBLISH_RETRY = "publish failed on a broken connection (%r); reconnecting in %.1fs"


def caller_properties(properties: object) -> dict[str, Any]:
    """AMQP properties from a mapping or a ``pika.BasicProperties``-like object."""
    if properties is None:
        return {}
    if isinstance(properties, Mapping):
        given = dict(properties)
    else:
        names = (
            *_CALLER_PROPERTIES,
            "content_type",
            "content_encoding",
            "correlation_id",
            "message_id",
            "timestamp",
            "type",
            "user_id",
            "app_id",
            "cluster_id",
        )
        given = {
            n: getattr(properties, n) for n in names if getattr(properties, n, None) is not None
        }
    unknown = sorted(k for k, v in given.items() if v is not None and k not in _CALLER_PROPERTIES)
    if unknown:
        raise InvalidEvent(
            f"properties {', '.join(unknown)} are set by the event envelope; "
            f"only {', '.join(_CALLER_PROPERTIES)} may be given"
        )
    result: dict[str, Any] = {}
    for name, given_value in given.items():
        if given_value is None:
            continue
        value = getattr(given_value, "value", given_value)  # pika.DeliveryMode is an Enum
        if name == "headers":
            result["application_headers"] = dict(value)
        elif name == "delivery_mode":
            if value not in (1, 2):
                raise InvalidEvent(f"delivery_mode must be 1 or 2, got {value!r}")
            result[name] = int(value)
        else:
            result[name] = value
    return result


def build_event(
    event_type: str,
    data: Mapping[str, Any],
    *,
    source: str,
    version: int,
    registry: SchemaRegistry,
    correlation_id: str | None = None,
    causation_id: str | None = None,
    traceparent: str | None = None,
    event_id: str | None = None,
) -> Event:
    """A new event, checked against its schema; ``InvalidEvent`` says what is wrong."""
    fields: dict[str, Any] = {
        "event_type": event_type,
        "data": data,
        "source": source,
        "correlation_id": correlation_id,
        "causation_id": causation_id,
        "traceparent": traceparent,
        "version": version,
    }
    if event_id is not None:
        fields["event_id"] = event_id
    try:
        event = Event(**fields)
    except ValidationError as err:
        raise InvalidEvent(f"invalid event {event_type!r}: {validation_summary(err)}") from err
    registry.validate_outgoing(event)
    return event


def encode(event: Event, extra: Mapping[str, Any], *, max_bytes: int) -> OutgoingMessage:
    """``event`` as a message to ``kitty.events``; ``PayloadTooLarge`` over ``max_bytes``."""
    body = event.encode()
    if len(body) > max_bytes:
        raise PayloadTooLarge(
            f"event {event.event_type!r} ({event.event_id}) is {len(body):,} bytes encoded, "
            f"over the {max_bytes:,}-byte limit (KITTY_MAX_MESSAGE_BYTES); "
            "nothing was sent"
        )
    properties = event.to_properties()
    if extra:
        headers = {
            **properties.get("application_headers", {}),
            **extra.get("application_headers", {}),
        }
        properties.update(extra)
        if headers:
            properties["application_headers"] = headers
    return OutgoingMessage(body, EVENTS_EXCHANGE, event.event_type, properties)


def start_sends(events: Sequence[Event]) -> tuple[Sequence[Event], list[tracing.Send]]:
    """A ``send`` span per event; each event then carries its span's context as traceparent.

    The envelope's ``traceparent`` field and header stay one value: the span's. An event
    that had one (given by the caller, or inherited from the event being handled) has
    its span parented to it when no span is current. Off, the events are returned as given.
    """
    if not tracing.enabled():
        return events, []
    sends = [
        tracing.start_send(
            EVENTS_EXCHANGE,
            event.event_type,
            message_id=event.event_id,
            conversation_id=event.correlation_id,
            parent=event.traceparent,
        )
        for event in events
    ]
    traced = [
        event.model_copy(update={"traceparent": send.traceparent})
        for event, send in zip(events, sends, strict=True)
    ]
    return traced, sends


def end_sends(sends: Sequence[tracing.Send], error: BaseException | None = None) -> None:
    """End the ``send`` spans of ``start_sends`` with the publish's outcome."""
    for send in sends:
        send.end(error)


class PublisherPool:
    """A Kombu pool of connections, each with one confirm-mode channel, for one bus."""

    def __init__(
        self, connection: Connection, *, limit: int, url: str, management_url: str
    ) -> None:
        self.url = url
        self.management_url = management_url
        self._pool: Any = connection.Pool(limit=limit)
        self._publishers: weakref.WeakKeyDictionary[Connection, ConfirmedPublisher] = (
            weakref.WeakKeyDictionary()
        )

    def close(self) -> None:
        """Close every pooled connection; later calls raise ``NotConnected``."""
        pool, self._pool = self._pool, None
        if pool is not None:
            pool.force_close_all()

    @contextmanager
    def acquire(self) -> Iterator[Connection]:
        """A pooled connection, held by this thread until the block ends."""
        pool = self._pool
        if pool is None:
            raise NotConnected(NOT_CONNECTED)
        connection = pool.acquire(block=True)
        try:
            yield connection
        finally:
            connection.release()

    def send(
        self,
        events: Sequence[Event],
        messages: Sequence[OutgoingMessage],
        *,
        allow_unroutable: bool,
        timeout: float,
    ) -> int:
        """Publish the encoded ``events``, count them; returns how many no queue took."""
        try:
            result = self.publish(messages, allow_unroutable=allow_unroutable, timeout=timeout)
        except PublishRejected as err:
            raise self.rejected(events[0].event_type) from err
        returned = set(result.returned)
        self.count(events, returned)
        return len(returned)

    def rejected(self, event_type: str) -> PublishRejected:
        """The error for events of ``event_type`` the broker refused, naming the full queue."""
        queue = self.full_queue(event_type)
        return PublishRejected(
            f"broker refused event(s) {event_type!r}: "
            + (
                f"queue {queue!r} is full (x-overflow reject-publish)"
                if queue
                else "a queue bound for it is full (x-overflow reject-publish) or unavailable"
            ),
            queue=queue,
        )

    def count(self, events: Sequence[Event], returned: set[str]) -> None:
        """Count confirmed ``events`` as published, or as unroutable (and log) when returned."""
        for event in events:
            if event.event_id in returned:
                EVENTS_UNROUTABLE.labels(event.event_type, event.source).inc()
            else:
                EVENTS_PUBLISHED.labels(event.event_type, event.source).inc()
        if returned:
            types = sorted({e.event_type for e in events if e.event_id in returned})
            logger.warning(LOG_UNROUTABLE, len(returned), ", ".join(types), sorted(returned)[:10])

    def publish(
        self,
        messages: Sequence[OutgoingMessage],
        *,
        allow_unroutable: bool,
        timeout: float,
        check: bool = True,
    ) -> PublishResult:
        """Publish on a pooled connection; a broken connection is replaced and the batch re-sent.

        Kombu's ``ensure`` reconnects with the platform's backoff, ``PUBLISH_RETRIES`` times
        at most; then ``PublishError``. ``check`` as in ``ConfirmedPublisher.publish_batch``.
        """
        with self.acquire() as connection:

            def publish_batch() -> PublishResult | PublishError:
                try:
                    return self._publisher(connection, timeout).publish_batch(
                        messages, allow_unroutable=allow_unroutable, timeout=timeout, check=check
                    )
                except PublishError as err:
                    # Returned, not raised: ensure() would retry a PublishTimeout (an OSError).
                    return err

            ensured = connection.ensure(
                _OnRevive(functools.partial(self._forget, connection)),
                publish_batch,
                errback=_log_publish_retry,
                max_retries=PUBLISH_RETRIES,
                **RECONNECT,
            )
            try:
                outcome = ensured()
            except (OperationalError, *connection.connection_errors) as err:
                self._forget(connection)
                connection.collect()
                raise PublishError(
                    f"could not publish to {safe_url(self.url)} after "
                    f"{PUBLISH_RETRIES + 1} tries: {err!r}"
                ) from err
            except connection.channel_errors as err:
                self._forget(connection)
                raise PublishError(
                    f"broker refused the publish: {err} (is the topology applied?)"
                ) from err
        if isinstance(outcome, PublishError):
            raise outcome
        return cast(PublishResult, outcome)

    def _forget(self, connection: Connection) -> None:
        """Close ``connection``'s publisher; its next publish opens a new confirm channel."""
        publisher = self._publishers.pop(connection, None)
        if publisher is not None:
            publisher.close()

    def _publisher(self, connection: Connection, timeout: float) -> ConfirmedPublisher:
        # One confirm channel per pooled connection; a connection is used by one thread at a time.
        publisher = self._publishers.get(connection)
        if publisher is None:
            publisher = ConfirmedPublisher(connection, confirm_timeout=timeout)
            self._publishers[connection] = publisher
        return publisher

    def full_queue(self, event_type: str) -> str | None:
        """Best effort: the reject-publish queue bound for ``event_type`` that is full."""
        try:
            candidates = self._reject_publish_queues(event_type)
            with self.acquire() as connection:
                channel = connection.channel()
                try:
                    for name, limit in candidates:
                        # AMQP's count is exact; the management API's is up to 5 s old.
                        _, messages, _ = channel.queue_declare(name, passive=True)
                        if messages >= limit:
                            return name
                finally:
                    channel.close()
            return candidates[0][0] if len(candidates) == 1 else None
        except Exception as err:  # the diagnosis must never hide the rejection itself
            logger.debug("could not name the full queue: %r", err)
            return None

    def _reject_publish_queues(self, event_type: str) -> list[tuple[str, int]]:
        """(queue, max length) of each reject-publish queue bound for ``event_type``."""
        found: list[tuple[str, int]] = []
        try:
            client = ManagementClient.from_urls(self.management_url, self.url)
            vhost = client.quote(vhost_of(self.url))
            bindings = client.get(f"exchanges/{vhost}/{EVENTS_EXCHANGE}/bindings/source") or []
            for binding in bindings:
                if binding.get("destination_type") != "queue" or not topic_matches(
                    binding["routing_key"], event_type
                ):
                    continue
                queue = client.get(f"queues/{vhost}/{client.quote(binding['destination'])}")
                arguments = queue.get("arguments") or {}
                policy = queue.get("effective_policy_definition") or {}
                overflow = arguments.get("x-overflow", policy.get("overflow"))
                limit = arguments.get("x-max-length", policy.get("max-length"))
                if overflow == "reject-publish" and limit is not None:
                    found.append((str(binding["destination"]), int(limit)))
        except Exception as err:
            # Without the management API, the topology in code still knows the guide's queues.
            logger.debug("management API unavailable (%r); using the topology", err)
            for spec in TOPOLOGY.queues:
                arguments = spec.arguments
                # Quorum queues reject-publish with no length limit, to dead-letter at least once.
                limited = "x-max-length" in arguments
                if (
                    limited
                    and arguments.get("x-overflow") == "reject-publish"
                    and any(
                        b.exchange == EVENTS_EXCHANGE and topic_matches(b.routing_key, event_type)
                        for b in spec.bindings
                    )
                ):
                    found.append((spec.name, int(arguments["x-max-length"])))
        return sorted(set(found))


class _OnRevive:
    """The object Kombu's ``ensure`` revives after a reconnect: calls ``revived()``."""

    def __init__(self, revived: Callable[[], None]) -> None:
        self.revived = revived

    def revive(self, channel: object) -> None:
        """Called with the new connection's default channel (unused: publishers open their own)."""
        self.revived()


def _log_publish_retry(exc: BaseException, interval: float) -> None:
    logger.warning(LOG_PUBLISH_RETRY, exc, interval)
