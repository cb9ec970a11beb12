"""EventBus: publish typed events to ``kitty.events`` and consume them by topic pattern."""

from __future__ import annotations

import contextvars
import logging
import select
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

import amqp
from kombu.connection import Connection
from kombu.entity import Queue
from kombu.exceptions import OperationalError
from kombu.mixins import ConsumerMixin
from pydantic import BaseModel, ValidationError

from events.envelope import Event, validation_summary
from events.errors import (
    ConfigurationError,
    DecodeError,
    EventError,
    InvalidEvent,
    NotConnected,
    PayloadTooLarge,
    Permanent,
    PublishError,
    PublishRejected,
    SchemaError,
)
from events.routing import check_pattern, topic_matches
from events.schemas import SchemaRegistry, default_registry
from kitty_tasks.broker import apply_topology, vhost_of
from kitty_tasks.deadletter import failure_headers, utc_now
from kitty_tasks.metrics import (
    EVENTS_CONSUMED,
    EVENTS_FAILED,
    EVENTS_PUBLISHED,
    EVENTS_UNROUTABLE,
    serve_metrics,
)
from kitty_tasks.publisher import ConfirmedPublisher, OutgoingMessage
from kitty_tasks.retry import plan_retry
from kitty_tasks.settings import Settings, get_settings
from kitty_tasks.topology import (
    BROKER_DEATH_HEADERS,
    DELAY_PREFIX,
    DLX_EXCHANGE,
    DLX_QUEUE,
    DLX_UNROUTED_EXCHANGE,
    EVENTS_EXCHANGE,
    H_ATTEMPT,
    H_FIRST_FAILURE,
    H_ORIGINAL_QUEUE,
    TOPOLOGY,
    Binding,
    QueueSpec,
    Topology,
    dead_letter_arguments,
    delay_exchange_name,
    dlq_name,
    subscriber_queue_name,
)

__all__ = ["ANONYMOUS_SOURCE", "NON_RETRYABLE", "EventBus", "Handler", "Subscription"]

logger = logging.getLogger(__name__)

Handler = Callable[[Event], Any]

#: Events a subscriber may hold unacked at once (per subscription). Handlers run one at a
#: time, so prefetch x the slowest handler's time must stay well under the broker's
#: consumer_timeout (30 min by default): 100 x 10 s is 17 min.
DEFAULT_PREFETCH = 100
#: Handled events acked together with one ``basic.ack(multiple=True)`` (at most half the
#: prefetch); the batch also goes out when the queue has nothing more to deliver right now.
ACK_BATCH = 25
#: Seconds a handled event waits at most for its batch's ack; and the gap between handled
#: events from which each is acked on its own (batching pays only for fast handlers).
ACK_DELAY = 0.2
ACK_SLOW_HANDLER = 0.005
#: Bytes asked of the consumer's socket per read: a few messages per syscall, while the
#: remainder py-amqp copies at every frame read stays small.
CONSUME_RECV_CHUNK = 16 * 1024
#: Pooled connections for publishing; a thread holds one only while it publishes.
DEFAULT_POOL_LIMIT = 8
#: Reconnect backoff of consumers and publishers: first wait, growth per try, ceiling (seconds).
RECONNECT_START = 0.5
RECONNECT_STEP = 1.0
RECONNECT_MAX = 10.0
#: Seconds a consumer waits for a delivery before it checks whether it should stop.
STOP_POLL = 0.25
#: Times a publish is tried again after the connection broke under it.
PUBLISH_RETRIES = 3
#: Source of events published by a bus built without one.
ANONYMOUS_SOURCE = "unknown-service"
#: Errors of a handler that no retry can fix: dead-lettered at once.
NON_RETRYABLE: tuple[type[BaseException], ...] = (Permanent, SchemaError, ValidationError)
#: AMQP properties copied onto a retried or dead-lettered copy of a delivery.
_COPIED_PROPERTIES = (
    "content_type",
    "content_encoding",
    "delivery_mode",
    "priority",
    "correlation_id",
    "reply_to",
    "message_id",
    "timestamp",
    "type",
    "app_id",
)
#: Properties a caller may set through ``publish(properties=...)``; the envelope owns the rest.
_CALLER_PROPERTIES = ("delivery_mode", "priority", "expiration", "reply_to", "headers")

LOG_RETRY = "handler %s failed on %s %s (%s: %s); attempt %d of %d, retrying in %.1fs via %s"
LOG_DEAD = "%s %s dead-lettered to %s after %d attempt(s): %s: %s"
LOG_UNROUTABLE = "%d event(s) of type %s had no queue bound (allow_unroutable): %s"
LOG_COPY_FAILED = "could not publish the retry/dead-letter copy of %s from %s; requeued: %s"
LOG_BUG = "unexpected error while processing a delivery from %s; requeued"
LOG_RECONNECT = "broker connection of %s lost (%r); reconnecting in %.1fs"
LOG_WORKER_CRASH = "consumer of %s crashed; restarting"
LOG_ACK_LOST = "acks of handled events from %s not sent (%s); the broker redelivers them"
LOG_PUBLISH_RETRY = "publish failed on a broken connection (%r); retry %d of %d in %.1fs"

#: The event a handler is working on, so events it publishes carry causation and correlation.
_current_event: contextvars.ContextVar[Event | None] = contextvars.ContextVar(
    "kitty_current_event", default=None
)


class _Stopping(Exception):
    """Raised inside the reconnect loop to abandon it when the bus is stopping."""


@dataclass
class Subscription:
    """One ``subscribe`` call: which pattern, which handler, consumed from which queue."""

    pattern: str
    handler: Handler
    queue: str
    prefetch_count: int
    topology: Topology = field(repr=False)

    @property
    def dead_letter_queue(self) -> str:
        """Where this subscription's failed events end up."""
        return dlq_name(self.queue)


def _ladder_topology() -> Topology:
    """The exchanges and queues retries and dead letters need: dlx and the delay buckets."""
    delay = tuple(e for e in TOPOLOGY.exchanges if e.name.startswith(DELAY_PREFIX))
    exchanges = (
        TOPOLOGY.exchange(EVENTS_EXCHANGE),
        TOPOLOGY.exchange(DLX_UNROUTED_EXCHANGE),
        TOPOLOGY.exchange(DLX_EXCHANGE),
        *delay,
    )
    delay_names = {e.name for e in delay}
    queues = (
        TOPOLOGY.queue(DLX_QUEUE),
        *(q for q in TOPOLOGY.queues if q.name in delay_names),
    )
    return Topology(exchanges, queues)


def _subscription_topology(queue: str, pattern: str | None) -> Topology:
    """The queue (with its DLX wiring and DLQ) and the binding a subscription needs."""
    extra = () if pattern is None else (Binding(EVENTS_EXCHANGE, pattern),)
    try:
        known = TOPOLOGY.queue(queue)
    except KeyError:
        spec = QueueSpec(queue, dead_letter_arguments(queue), extra)
    else:
        # A queue of the guide keeps its own arguments (declaring others would be refused).
        added = tuple(b for b in extra if b not in known.bindings)
        spec = QueueSpec(known.name, known.arguments, (*known.bindings, *added), known.durable)
    dead_letters = QueueSpec(dlq_name(queue), {}, (Binding(DLX_EXCHANGE, queue),))
    return Topology((), (spec, dead_letters))


def _caller_properties(properties: object) -> dict[str, Any]:
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


class EventBus:
    """Publishes events to ``kitty.events`` and runs subscriptions, each on its own thread.

    Publishing uses a Kombu pool of connections, each with a confirm-mode
    channel; every publish waits for the broker's confirm and is ``mandatory``.
    Each subscription consumes from its own durable queue; a failing handler is
    retried through the delay ladder into that queue only, and dead-lettered to
    ``<queue>.dlq`` with ``x-kitty-*`` headers after the last attempt.
    """

    def __init__(
        self,
        url: str | None = None,
        source: str | None = None,
        *,
        registry: SchemaRegistry | None = None,
        settings: Settings | None = None,
        prefetch_count: int = DEFAULT_PREFETCH,
        pool_limit: int = DEFAULT_POOL_LIMIT,
        max_retries: int | None = None,
        retry_backoff_base: float | None = None,
        retry_backoff_max: float | None = None,
        max_message_bytes: int | None = None,
        publish_timeout: float | None = None,
        allow_unroutable: bool = False,
        require_schemas: bool = False,
        declare: bool = True,
    ) -> None:
        settings = settings or get_settings()
        self.url = url or settings.rabbitmq_url
        if source is not None and (not isinstance(source, str) or not source.strip()):
            raise ConfigurationError(f"source must be a non-empty str, got {source!r}")
        self._explicit_source = source is not None
        self.source = source or ANONYMOUS_SOURCE
        if prefetch_count < 1 or pool_limit < 1:
            raise ConfigurationError("prefetch_count and pool_limit must be >= 1")
        self.registry = registry or default_registry
        self.prefetch_count = prefetch_count
        self.pool_limit = pool_limit
        self.max_retries = settings.max_retries if max_retries is None else max_retries
        if self.max_retries < 0:
            raise ConfigurationError(f"max_retries must be >= 0, got {self.max_retries}")
        self.retry_backoff_base = retry_backoff_base or settings.retry_backoff_base
        self.retry_backoff_max = retry_backoff_max or settings.retry_backoff_max
        self.max_message_bytes = max_message_bytes or settings.max_message_bytes
        self.publish_timeout = publish_timeout or settings.publish_timeout
        self.allow_unroutable = allow_unroutable
        self.require_schemas = require_schemas
        self.declare = declare
        self.management_url = settings.management_url
        self.metrics_port = settings.metrics_port
        #: Events confirmed by the broker but routed to no queue (only with allow_unroutable).
        self.unroutable_count = 0
        self._connection: Connection | None = None
        self._pool: Any = None
        self._publishers: weakref.WeakKeyDictionary[Connection, ConfirmedPublisher] = (
            weakref.WeakKeyDictionary()
        )
        self._subscriptions: dict[str, Subscription] = {}
        self._workers: list[_SubscriptionWorker] = []
        self._threads: list[threading.Thread] = []
        self._stopping = threading.Event()
        self._lock = threading.RLock()
        self._ladder_declared = False

    # -- lifecycle ---------------------------------------------------------------------------

    def connect(self, *, max_retries: int | None = 3) -> EventBus:
        """Open the connection (retrying with backoff) and the publisher pool; returns self."""
        with self._lock:
            if self._connection is not None:
                return self
            connection = Connection(self.url)
            try:
                connection.ensure_connection(
                    max_retries=max_retries,
                    interval_start=RECONNECT_START,
                    interval_step=RECONNECT_STEP,
                    interval_max=RECONNECT_MAX,
                )
            except (OperationalError, *connection.connection_errors) as err:
                connection.release()
                raise EventError(f"cannot connect to RabbitMQ at {_safe(self.url)}: {err}") from err
            self._connection = connection
            self._pool = connection.Pool(limit=self.pool_limit)
            self._ladder_declared = False
            return self

    def disconnect(self) -> None:
        """Stop consuming (if running) and close every connection; safe to call twice."""
        self.stop()
        with self._lock:
            connection, self._connection = self._connection, None
            pool, self._pool = self._pool, None
            if pool is not None:
                pool.force_close_all()
            if connection is not None:
                connection.release()

    close = disconnect

    def __enter__(self) -> EventBus:
        return self.connect()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.disconnect()

    @property
    def connected(self) -> bool:
        """True between ``connect()`` and ``disconnect()``."""
        return self._connection is not None

    # -- publishing --------------------------------------------------------------------------

    def event(
        self,
        event_type: str,
        data: Mapping[str, Any] | BaseModel | None = None,
        correlation_id: str | None = None,
        *,
        causation_id: str | None = None,
        traceparent: str | None = None,
        version: int | None = None,
        event_id: str | None = None,
    ) -> Event:
        """Build (and validate) the event ``publish`` would send, without sending it."""
        if isinstance(data, BaseModel):
            data = data.model_dump(mode="json")
        current = _current_event.get()
        if current is not None:
            # Published while handling another event: same conversation, caused by it.
            correlation_id = correlation_id or current.correlation_id or current.event_id
            causation_id = causation_id or current.event_id
            traceparent = traceparent or current.traceparent
        fields: dict[str, Any] = {
            "event_type": event_type,
            "data": {} if data is None else data,
            "source": self.source,
            "correlation_id": correlation_id,
            "causation_id": causation_id,
            "traceparent": traceparent,
            "version": version or self.registry.latest(event_type) or 1,
        }
        if event_id is not None:
            fields["event_id"] = event_id
        try:
            event = Event(**fields)
        except ValidationError as err:
            raise InvalidEvent(f"invalid event {event_type!r}: {validation_summary(err)}") from err
        self.registry.validate_outgoing(event)
        return event

    def publish(
        self,
        event_type: str,
        data: Mapping[str, Any] | BaseModel | None = None,
        correlation_id: str | None = None,
        *,
        causation_id: str | None = None,
        traceparent: str | None = None,
        version: int | None = None,
        properties: object = None,
        allow_unroutable: bool | None = None,
    ) -> Event:
        """Publish one event and wait for the broker's confirm; returns the event sent.

        Raises ``InvalidEvent``/``SchemaError`` for bad input, ``PayloadTooLarge``
        before sending, ``Unroutable`` when no queue is bound for ``event_type``,
        ``PublishRejected`` when a full queue refuses it, ``PublishTimeout``.
        """
        event = self.event(
            event_type,
            data,
            correlation_id,
            causation_id=causation_id,
            traceparent=traceparent,
            version=version,
        )
        self._send([event], _caller_properties(properties), allow_unroutable)
        return event

    def publish_many(
        self,
        events: Iterable[Event | tuple[str, Mapping[str, Any]]],
        *,
        allow_unroutable: bool | None = None,
    ) -> list[Event]:
        """Publish events (``Event`` or ``(event_type, data)``) and wait once for all confirms.

        Every event is validated and size-checked before the first is sent.
        """
        prepared: list[Event] = []
        for item in events:
            if isinstance(item, Event):
                event = item if item.source else item.model_copy(update={"source": self.source})
                self.registry.validate_outgoing(event)
                prepared.append(event)
            elif isinstance(item, tuple) and len(item) == 2:
                prepared.append(self.event(item[0], item[1]))
            else:
                raise InvalidEvent(
                    f"publish_many takes Event objects or (event_type, data) pairs, got {item!r}"
                )
        if prepared:
            self._send(prepared, {}, allow_unroutable)
        return prepared

    def _encode(self, event: Event, extra: Mapping[str, Any]) -> OutgoingMessage:
        body = event.encode()
        if len(body) > self.max_message_bytes:
            raise PayloadTooLarge(
                f"event {event.event_type!r} ({event.event_id}) is {len(body):,} bytes encoded, "
                f"over the {self.max_message_bytes:,}-byte limit (KITTY_MAX_MESSAGE_BYTES); "
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

    def _send(
        self, events: Sequence[Event], extra: Mapping[str, Any], allow_unroutable: bool | None
    ) -> None:
        messages = [self._encode(event, extra) for event in events]
        allow = self.allow_unroutable if allow_unroutable is None else allow_unroutable
        try:
            result = self._publish(messages, allow_unroutable=allow)
        except PublishRejected as err:
            queue = self._full_queue(events[0].event_type)
            raise PublishRejected(
                f"broker refused event(s) {events[0].event_type!r}: "
                + (
                    f"queue {queue!r} is full (x-overflow reject-publish)"
                    if queue
                    else "a queue bound for it is full (x-overflow reject-publish) or unavailable"
                ),
                queue=queue,
            ) from err
        returned = set(result.returned)
        for event in events:
            if event.event_id in returned:
                EVENTS_UNROUTABLE.labels(event.event_type, event.source).inc()
            else:
                EVENTS_PUBLISHED.labels(event.event_type, event.source).inc()
        if returned:
            with self._lock:
                self.unroutable_count += len(returned)
            types = sorted({e.event_type for e in events if e.event_id in returned})
            logger.warning(LOG_UNROUTABLE, len(returned), ", ".join(types), sorted(returned)[:10])

    def _publish(self, messages: Sequence[OutgoingMessage], *, allow_unroutable: bool) -> Any:
        """Publish on a pooled connection, retrying on a broken connection with backoff."""
        for attempt in range(PUBLISH_RETRIES + 1):
            with self._acquire() as connection:
                publisher = self._publisher(connection)
                try:
                    return publisher.publish_batch(
                        messages, allow_unroutable=allow_unroutable, timeout=self.publish_timeout
                    )
                except PublishError:
                    raise
                except (OperationalError, *connection.connection_errors) as err:
                    publisher.close()
                    connection.collect()
                    if attempt == PUBLISH_RETRIES:
                        raise PublishError(
                            f"could not publish to {_safe(self.url)} after "
                            f"{PUBLISH_RETRIES + 1} tries: {err!r}"
                        ) from err
                    delay = min(RECONNECT_MAX, RECONNECT_START + RECONNECT_STEP * attempt)
                    logger.warning(LOG_PUBLISH_RETRY, err, attempt + 1, PUBLISH_RETRIES, delay)
                except connection.channel_errors as err:
                    publisher.close()
                    raise PublishError(
                        f"broker refused the publish: {err} (is the topology applied?)"
                    ) from err
            time.sleep(delay)
        raise AssertionError("unreachable")  # pragma: no cover

    @contextmanager
    def _acquire(self) -> Iterator[Connection]:
        pool = self._pool
        if pool is None:
            raise NotConnected(
                "the EventBus is not connected: call bus.connect() or use `with EventBus(...)`"
            )
        connection = pool.acquire(block=True)
        try:
            yield connection
        finally:
            connection.release()

    def _publisher(self, connection: Connection) -> ConfirmedPublisher:
        # One confirm channel per pooled connection; a connection is used by one thread at a time.
        publisher = self._publishers.get(connection)
        if publisher is None:
            publisher = ConfirmedPublisher(connection, confirm_timeout=self.publish_timeout)
            self._publishers[connection] = publisher
        return publisher

    def _full_queue(self, event_type: str) -> str | None:
        """Best effort: the reject-publish queue bound for ``event_type`` that is full."""
        try:
            candidates = self._reject_publish_queues(event_type)
            with self._acquire() as connection:
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
        from kitty_tasks.management import ManagementClient

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
                if arguments.get("x-overflow") == "reject-publish" and any(
                    b.exchange == EVENTS_EXCHANGE and topic_matches(b.routing_key, event_type)
                    for b in spec.bindings
                ):
                    found.append((spec.name, int(arguments["x-max-length"])))
        return sorted(set(found))

    # -- subscribing -------------------------------------------------------------------------

    def subscribe(
        self,
        pattern: str,
        handler: Handler,
        queue: str | None = None,
        *,
        prefetch_count: int | None = None,
    ) -> Subscription:
        """Consume events matching ``pattern`` with ``handler(event)``.

        The queue is ``queue`` (e.g. the guide's ``audit.events``) or one durable
        queue per (source, pattern), named by ``SUBSCRIBER_QUEUE_TEMPLATE``; it
        is declared at once when the bus is connected, so events published from
        now on wait for this subscriber.
        """
        try:
            check_pattern(pattern)
        except ValueError as err:
            raise ConfigurationError(str(err)) from err
        if not callable(handler):
            raise ConfigurationError(f"handler must be callable, got {handler!r}")
        if queue is None:
            if not self._explicit_source:
                raise ConfigurationError(
                    "subscribe() without queue= names the queue after the source: "
                    "build the bus with EventBus(url, source='my-service')"
                )
            queue = subscriber_queue_name(self.source, pattern)
        if not isinstance(queue, str) or not queue or len(queue.encode()) > 255:
            raise ConfigurationError(f"queue must be a non-empty name under 256 bytes: {queue!r}")
        with self._lock:
            if queue in self._subscriptions:
                raise ConfigurationError(
                    f"queue {queue!r} already has a subscription in this bus "
                    f"({self._subscriptions[queue].pattern!r}); one handler per queue"
                )
            subscription = Subscription(
                pattern,
                handler,
                queue,
                prefetch_count or self.prefetch_count,
                _subscription_topology(queue, pattern),
            )
            if self._connection is not None and self.declare:
                with self._acquire() as connection:
                    self._declare(connection, subscription.topology)
            self._subscriptions[queue] = subscription
            return subscription

    def declare_queue(self, name: str, durable: bool = True, *, pattern: str | None = None) -> str:
        """Declare queue ``name`` with the DLX wiring and its DLQ, bound to ``pattern`` if given.

        Idempotent; the guide's queues keep their own arguments. Returns the name.
        """
        if pattern is not None:
            check_pattern(pattern)
        topology = _subscription_topology(name, pattern)
        if not durable:
            queue, dead = topology.queues
            topology = Topology(
                (), (QueueSpec(queue.name, queue.arguments, queue.bindings, False), dead)
            )
        with self._acquire() as connection:
            self._declare(connection, topology)
        return name

    @property
    def subscriptions(self) -> tuple[Subscription, ...]:
        """The subscriptions made so far."""
        return tuple(self._subscriptions.values())

    def _declare(self, connection: Connection, topology: Topology) -> None:
        try:
            if not self._ladder_declared:
                apply_topology(connection, _ladder_topology())
                self._ladder_declared = True
            apply_topology(connection, topology)
        except connection.channel_errors as err:
            names = ", ".join(q.name for q in topology.queues)
            raise ConfigurationError(
                f"cannot declare {names}: {err} (a queue of that name exists with other arguments?)"
            ) from err

    def start_consuming(self, *, block: bool = True) -> None:
        """Run every subscription, each on its own thread and connection.

        Blocks until ``stop()`` (from another thread, a handler or a signal
        handler) or Ctrl-C; with ``block=False`` returns once the threads started.
        """
        if self._connection is None:
            raise NotConnected("call bus.connect() before start_consuming()")
        if not self._subscriptions:
            raise ConfigurationError("nothing to consume: call subscribe() first")
        with self._lock:
            if any(t.is_alive() for t in self._threads):
                raise ConfigurationError("this bus is already consuming")
            self._stopping.clear()
            self._workers = [_SubscriptionWorker(self, s) for s in self._subscriptions.values()]
            self._threads = [
                threading.Thread(
                    target=w.run_forever, name=f"events:{w.subscription.queue}", daemon=True
                )
                for w in self._workers
            ]
            for thread in self._threads:
                thread.start()
        if self.metrics_port is not None:
            serve_metrics(self.metrics_port)
        if not block:
            return
        try:
            while any(t.is_alive() for t in self._threads):
                # Short joins keep the main thread free to run signal handlers.
                for thread in self._threads:
                    thread.join(0.2)
        except KeyboardInterrupt:
            logger.info("interrupted; finishing the events in hand")
            self.stop()

    def wait_until_consuming(self, timeout: float = 10.0) -> bool:
        """Wait until every subscription has a consumer on the broker; False on timeout."""
        deadline = time.monotonic() + timeout
        for worker in list(self._workers):
            if not worker.ready.wait(max(0.0, deadline - time.monotonic())):
                return False
        return bool(self._workers)

    def stop(self, timeout: float | None = 30.0) -> None:
        """Stop consuming: each handler finishes (and acks) its event in hand, then returns.

        Callable from another thread, a handler, or a signal handler; waits for the
        consumer threads unless called from one of them.
        """
        self._stopping.set()
        for worker in list(self._workers):
            worker.should_stop = True
        current = threading.current_thread()
        for thread in list(self._threads):
            if thread is not current and thread.is_alive():
                thread.join(timeout)

    # -- processing a delivery (runs on a subscription's thread) ------------------------------

    def _process(
        self,
        subscription: Subscription,
        message: Any,
        ack: Callable[[Any], None] | None = None,
    ) -> None:
        """Decode, validate and handle one delivery, then ``ack(message)`` (default: at once)."""
        acknowledge = ack or _ack_now
        headers = dict(message.headers or {})
        attempt = _int(headers.get(H_ATTEMPT), 1)
        queue = subscription.queue
        try:
            event = Event.decode(
                message.body,
                content_type=message.content_type,
                content_encoding=message.content_encoding,
            )
            self.registry.validate_incoming(event, require=self.require_schemas)
        except (DecodeError, SchemaError) as err:
            event_type = str(message.properties.get("type") or "unknown")
            self._dead_letter(
                message,
                queue=queue,
                exc=err,
                attempts=attempt,
                headers=headers,
                event_type=event_type,
            )
            acknowledge(message)
            return
        token = _current_event.set(event)
        try:
            subscription.handler(event)
        except Exception as exc:
            retryable = not isinstance(exc, NON_RETRYABLE) and attempt <= self.max_retries
            if retryable:
                self._retry(
                    message,
                    queue=queue,
                    exc=exc,
                    attempt=attempt,
                    headers=headers,
                    event=event,
                    subscription=subscription,
                )
            else:
                self._dead_letter(
                    message,
                    queue=queue,
                    exc=exc,
                    attempts=attempt,
                    headers=headers,
                    event_type=event.event_type,
                )
            acknowledge(message)
            return
        finally:
            _current_event.reset(token)
        acknowledge(message)
        _consumed_counter(event.event_type, queue).inc()

    def _copy(self, message: Any, headers: dict[str, Any]) -> dict[str, Any]:
        properties = {
            name: message.properties[name]
            for name in _COPIED_PROPERTIES
            if message.properties.get(name) is not None
        }
        properties["application_headers"] = headers
        return properties

    def _retry(
        self,
        message: Any,
        *,
        queue: str,
        exc: Exception,
        attempt: int,
        headers: dict[str, Any],
        event: Event,
        subscription: Subscription,
    ) -> None:
        plan = plan_retry(attempt - 1, base=self.retry_backoff_base, cap=self.retry_backoff_max)
        exchange = delay_exchange_name(plan.bucket)
        # The broker's record of earlier trips through the ladder; our x-kitty-* headers say more.
        carried = {k: v for k, v in headers.items() if k not in BROKER_DEATH_HEADERS}
        carried.update(
            {
                H_ATTEMPT: attempt + 1,
                H_FIRST_FAILURE: headers.get(H_FIRST_FAILURE) or utc_now(),
                H_ORIGINAL_QUEUE: queue,
            }
        )
        properties = self._copy(message, carried)
        # The jittered delay as per-message TTL; the bucket's own TTL bounds it from above.
        properties["expiration"] = str(max(1, int(plan.delay * 1000)))
        # Routing key = the subscriber's queue: on expiry the default exchange sends it back
        # there and only there, so other subscribers never see the retry.
        self._publish(
            [OutgoingMessage(message.body, exchange, queue, properties)], allow_unroutable=False
        )
        logger.warning(
            LOG_RETRY,
            _name(subscription.handler),
            event.event_type,
            event.event_id,
            type(exc).__name__,
            exc,
            attempt,
            self.max_retries + 1,
            plan.delay,
            exchange,
        )
        EVENTS_FAILED.labels(event.event_type, queue, "retried").inc()

    def _dead_letter(
        self,
        message: Any,
        *,
        queue: str,
        exc: BaseException,
        attempts: int,
        headers: dict[str, Any],
        event_type: str,
    ) -> None:
        carried = {k: v for k, v in headers.items() if k not in BROKER_DEATH_HEADERS}
        carried.update(
            failure_headers(
                exc, attempts=attempts, first_failure=headers.get(H_FIRST_FAILURE), queue=queue
            )
        )
        properties = self._copy(message, carried)
        self._publish(
            [OutgoingMessage(message.body, DLX_EXCHANGE, queue, properties)], allow_unroutable=False
        )
        logger.error(
            LOG_DEAD,
            event_type,
            message.properties.get("message_id"),
            dlq_name(queue),
            attempts,
            type(exc).__name__,
            exc,
        )
        EVENTS_FAILED.labels(event_type, queue, "dead_lettered").inc()


class _SubscriptionWorker(ConsumerMixin):  # type: ignore[misc]
    """Consumes one subscription's queue on a connection of its own; reconnects forever."""

    def __init__(self, bus: EventBus, subscription: Subscription) -> None:
        assert bus._connection is not None  # checked by start_consuming
        self.bus = bus
        self.subscription = subscription
        self.connection = bus._connection.clone()
        self.ready = threading.Event()
        self._acks: _AckBatch | None = None

    def get_consumers(self, consumer: Any, channel: Any) -> list[Any]:
        queue = Queue(self.subscription.queue, no_declare=True)
        return [
            consumer(
                queues=[queue],
                on_message=self.on_message,
                prefetch_count=self.subscription.prefetch_count,
            )
        ]

    @contextmanager
    def establish_connection(self) -> Iterator[Connection]:
        with self.create_connection() as conn:
            conn.ensure_connection(
                self.on_connection_error,
                self.connect_max_retries,
                interval_start=RECONNECT_START,
                interval_step=RECONNECT_STEP,
                interval_max=RECONNECT_MAX,
            )
            if self.bus.declare:
                # Redeclared on every (re)connect: a restarted broker may have lost the queue.
                apply_topology(conn, _ladder_topology())
                apply_topology(conn, self.subscription.topology)
            yield conn

    def on_connection_error(self, exc: BaseException, interval: float) -> None:
        if self.should_stop:
            raise _Stopping from exc
        self.ready.clear()
        logger.warning(LOG_RECONNECT, self.subscription.queue, exc, interval)

    def on_consume_ready(
        self, connection: Any, channel: Any, consumers: Any, **kwargs: Any
    ) -> None:
        self.ready.set()

    def on_consume_end(self, connection: Any, channel: Any) -> None:
        self.ready.clear()

    def on_message(self, message: Any) -> None:
        if self.should_stop:
            # Not started: left unacked, the broker gives it to the next consumer.
            return
        try:
            self.bus._process(self.subscription, message, self._ack)
        except (*self.connection.connection_errors, *self.connection.channel_errors):
            raise
        except PublishError as err:
            logger.error(
                LOG_COPY_FAILED, message.properties.get("message_id"), self.subscription.queue, err
            )
            self._requeue_later(message)
        except Exception:
            logger.exception(LOG_BUG, self.subscription.queue)
            self._requeue_later(message)

    def _ack(self, message: Any) -> None:
        acks = self._acks
        if acks is None or message.channel is not acks.channel:
            message.ack()
        else:
            acks.add(message.delivery_tag)

    def consume(
        self,
        limit: int | None = None,
        timeout: float | None = None,
        safety_interval: float = 1,
        **kwargs: Any,
    ) -> Iterator[None]:
        """ConsumerMixin.consume, acking handled events in batches (flushed before it returns).

        On py-amqp it reads the socket itself: kombu's loop sets and resets the socket timeout
        (two syscalls) and reads each frame part with its own ``recv``, for every event.
        """
        with self.consumer_context(**kwargs) as (conn, channel, _consumers):
            acks = _AckBatch(channel, max(1, min(ACK_BATCH, self.subscription.prefetch_count // 2)))
            self._acks = acks
            try:
                raw = conn.connection
                if isinstance(raw, amqp.Connection) and hasattr(raw.transport, "_quick_recv"):
                    yield from self._read_loop(conn, raw, acks, safety_interval)
                else:
                    for _ in super().consume(limit, timeout, safety_interval, **kwargs):
                        acks.flush()
                        yield
            finally:
                self._acks = None
                # Before the channel closes (which would requeue them for a second delivery).
                try:
                    acks.flush()
                except (*conn.connection_errors, *conn.channel_errors) as err:
                    logger.warning(LOG_ACK_LOST, self.subscription.queue, err)

    def _read_loop(
        self, conn: Connection, raw: amqp.Connection, acks: _AckBatch, idle_wait: float
    ) -> Iterator[None]:
        transport = raw.transport
        _buffer_reads(transport)
        poller = select.poll()
        poller.register(transport.sock, select.POLLIN)
        while not self.should_stop:
            if not _has_data(transport, poller, 0):
                # Nothing more to handle right now: ack what was handled, then wait.
                acks.flush()
                if not _has_data(transport, poller, idle_wait):
                    conn.heartbeat_check()
                    continue
            elif acks.due():
                acks.flush()
            raw.blocking_read(None)
            yield

    def _requeue_later(self, message: Any) -> None:
        # A short pause so that a persistent failure does not spin; stop() cuts it short.
        self.bus._stopping.wait(1.0)
        message.requeue()

    def run_forever(self) -> None:
        """ConsumerMixin.run until stopped, restarting it after unexpected errors."""
        while not self.should_stop:
            try:
                self.run(safety_interval=STOP_POLL)
            except _Stopping:
                break
            except Exception:
                if self.should_stop:
                    break
                logger.exception(LOG_WORKER_CRASH, self.subscription.queue)
                self.bus._stopping.wait(RECONNECT_START)
        self.ready.clear()


#: EVENTS_CONSUMED's child per (event type, queue): ``labels()`` costs more than a dict lookup.
_CONSUMED: dict[tuple[str, str], Any] = {}


def _consumed_counter(event_type: str, queue: str) -> Any:
    counter = _CONSUMED.get((event_type, queue))
    if counter is None:
        counter = EVENTS_CONSUMED.labels(event_type, queue)
        if len(_CONSUMED) < 10_000:
            _CONSUMED[(event_type, queue)] = counter
    return counter


def _ack_now(message: Any) -> None:
    message.ack()


class _AckBatch:
    """Handled deliveries of one channel, acked with one ``basic.ack(multiple=True)``.

    Deliveries are handled one at a time in delivery order, so acking the last handled tag
    with ``multiple`` acks exactly the handled ones before it (a requeued one is settled
    already; one left unhandled at stop has a higher tag).
    """

    def __init__(self, channel: Any, size: int) -> None:
        self.channel = channel
        self.size = size
        self.last_tag: int | None = None
        self.count = 0
        self.since = 0.0
        self.handled_at = 0.0

    def add(self, delivery_tag: int) -> None:
        now = time.monotonic()
        if self.last_tag is None:
            self.since = now
        self.last_tag = delivery_tag
        self.count += 1
        # Events handled more than ACK_SLOW_HANDLER apart gain nothing from a shared ack.
        slow = now - self.handled_at > ACK_SLOW_HANDLER
        self.handled_at = now
        if slow or self.count >= self.size or now - self.since >= ACK_DELAY:
            self.flush()

    def due(self) -> bool:
        return self.last_tag is not None and time.monotonic() - self.since >= ACK_DELAY

    def flush(self) -> None:
        tag, self.last_tag = self.last_tag, None
        self.count = 0
        if tag is not None:
            self.channel.basic_ack(tag, multiple=True)


def _buffer_reads(transport: Any) -> None:
    """Read up to ``CONSUME_RECV_CHUNK`` bytes per ``recv``; py-amqp keeps the surplus.

    As ``rpc.link`` does: py-amqp asks for exactly each frame part (header, payload, end),
    three syscalls per frame. Plain TCP only: TLS keeps its own buffer.
    """
    sock = getattr(transport, "sock", None)
    if sock is None or hasattr(sock, "pending"):
        return
    recv: Callable[[int], bytes] = sock.recv

    def recv_chunk(n: int) -> bytes:
        return recv(max(n, CONSUME_RECV_CHUNK))

    transport._quick_recv = recv_chunk


def _has_data(transport: Any, poller: select.poll, timeout: float) -> bool:
    """True when a frame (part) is buffered or the socket is readable within ``timeout``."""
    if transport._read_buffer:
        return True
    pending = getattr(transport.sock, "pending", None)
    if pending is not None and pending():
        return True
    return bool(poller.poll(timeout * 1000))


def _int(value: object, default: int) -> int:
    if isinstance(value, (int, str, bytes)):
        try:
            return int(value)
        except ValueError:
            return default
    return default


def _name(handler: Handler) -> str:
    return str(getattr(handler, "__qualname__", None) or repr(handler))


def _safe(url: str) -> str:
    """``url`` without its password, for messages."""
    return str(Connection(url).as_uri(include_password=False))
