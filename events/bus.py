"""EventBus: publish typed events to ``kitty.events`` and consume them by topic pattern."""

from __future__ import annotations

import contextvars
import functools
import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

from kombu.connection import Connection
from pydantic import BaseModel, ValidationError

from events.connection import open_connection
from events.consumer import SubscriptionConsumer
from events.envelope import Event, validation_summary
from events.errors import (
    ConfigurationError,
    DecodeError,
    InvalidEvent,
    NotConnected,
    SchemaError,
)
from events.failures import NON_RETRYABLE, dead_letter, retry
from events.publishing import (
    DEFAULT_POOL_LIMIT,
    NOT_CONNECTED,
    PublisherPool,
    caller_properties,
    encode,
)
from events.routing import check_pattern
from events.schemas import SchemaRegistry, default_registry
from kitty_tasks.core.declarer import apply_topology
from kitty_tasks.core.metrics import EVENTS_CONSUMED, serve_metrics
from kitty_tasks.core.publisher import OutgoingMessage
from kitty_tasks.core.settings import Settings, get_settings
from kitty_tasks.core.shutdown import stop_on_signals
from kitty_tasks.core.topology import (
    DELAY_PREFIX,
    DLX_EXCHANGE,
    DLX_QUEUE,
    DLX_UNROUTED_EXCHANGE,
    EVENTS_EXCHANGE,
    H_ATTEMPT,
    TOPOLOGY,
    Binding,
    QueueSpec,
    Topology,
    dead_letter_arguments,
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
#: Source of events published by a bus built without one.
ANONYMOUS_SOURCE = "unknown-service"

#: The event a handler is working on, so events it publishes carry causation and correlation.
_current_event: contextvars.ContextVar[Event | None] = contextvars.ContextVar(
    "kitty_current_event", default=None
)


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
        self._pool: PublisherPool | None = None
        self._subscriptions: dict[str, Subscription] = {}
        self._consumers: list[SubscriptionConsumer] = []
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
            connection = open_connection(self.url, max_retries=max_retries)
            self._connection = connection
            self._pool = PublisherPool(
                connection,
                limit=self.pool_limit,
                url=self.url,
                management_url=self.management_url,
            )
            self._ladder_declared = False
            return self

    def disconnect(self) -> None:
        """Stop consuming (if running) and close every connection; safe to call twice."""
        self.stop()
        with self._lock:
            connection, self._connection = self._connection, None
            pool, self._pool = self._pool, None
            if pool is not None:
                pool.close()
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
        self._send([event], caller_properties(properties), allow_unroutable)
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

    def _send(
        self, events: Sequence[Event], extra: Mapping[str, Any], allow_unroutable: bool | None
    ) -> None:
        messages = [encode(event, extra, max_bytes=self.max_message_bytes) for event in events]
        allow = self.allow_unroutable if allow_unroutable is None else allow_unroutable
        unroutable = self._publisher_pool().send(
            events, messages, allow_unroutable=allow, timeout=self.publish_timeout
        )
        if unroutable:
            with self._lock:
                self.unroutable_count += unroutable

    def _publish_copies(self, messages: Sequence[OutgoingMessage]) -> None:
        """Publish retried or dead-lettered copies, which must reach their queue."""
        self._publisher_pool().publish(
            messages, allow_unroutable=False, timeout=self.publish_timeout
        )

    def _publisher_pool(self) -> PublisherPool:
        pool = self._pool
        if pool is None:
            raise NotConnected(NOT_CONNECTED)
        return pool

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
                with self._publisher_pool().acquire() as connection:
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
        with self._publisher_pool().acquire() as connection:
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
        connection = self._connection
        if connection is None:
            raise NotConnected("call bus.connect() before start_consuming()")
        if not self._subscriptions:
            raise ConfigurationError("nothing to consume: call subscribe() first")
        with self._lock:
            if any(t.is_alive() for t in self._threads):
                raise ConfigurationError("this bus is already consuming")
            self._stopping.clear()
            self._consumers = [self._consumer(connection, s) for s in self._subscriptions.values()]
            self._threads = [
                threading.Thread(target=c.run_forever, name=f"events:{c.queue}", daemon=True)
                for c in self._consumers
            ]
            for thread in self._threads:
                thread.start()
        if self.metrics_port is not None:
            serve_metrics(self.metrics_port)
        if not block:
            return
        # Wait on the stop event, never in Thread.join: on Python 3.11 a Ctrl-C that lands
        # inside join() can mark a still-running thread as stopped (the bpo-45274 fix),
        # after which stop() would not wait for its event in hand.
        with stop_on_signals(self._request_stop):
            while not self._stopping.wait(0.2):
                if not any(t.is_alive() for t in self._threads):
                    return
        logger.info("stopping; finishing the events in hand")
        self.stop()

    def _request_stop(self) -> None:
        """Flag every consumer to stop after its event in hand; returns at once."""
        self._stopping.set()
        for consumer in list(self._consumers):
            consumer.should_stop = True

    def _consumer(self, connection: Connection, subscription: Subscription) -> SubscriptionConsumer:
        topologies = (_ladder_topology(), subscription.topology) if self.declare else ()
        return SubscriptionConsumer(
            connection,
            queue=subscription.queue,
            prefetch_count=subscription.prefetch_count,
            process=functools.partial(self._process, subscription),
            topologies=topologies,
            stopping=self._stopping,
        )

    def wait_until_consuming(self, timeout: float = 10.0) -> bool:
        """Wait until every subscription has a consumer on the broker; False on timeout."""
        deadline = time.monotonic() + timeout
        for consumer in list(self._consumers):
            if not consumer.ready.wait(max(0.0, deadline - time.monotonic())):
                return False
        return bool(self._consumers)

    def stop(self, timeout: float | None = 30.0) -> None:
        """Stop consuming: each handler finishes (and acks) its event in hand, then returns.

        Callable from another thread, a handler, or a signal handler; waits for the
        consumer threads unless called from one of them.
        """
        self._request_stop()
        current = threading.current_thread()
        for thread in list(self._threads):
            if thread is not current and thread.is_alive():
                thread.join(timeout)

    # -- processing a delivery (runs on a subscription's thread) ------------------------------

    def _process(
        self, subscription: Subscription, message: Any, acknowledge: Callable[[Any], None]
    ) -> None:
        """Decode, validate and handle one delivery, then ``acknowledge(message)``."""
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
            dead_letter(
                self._publish_copies,
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
                retry(
                    self._publish_copies,
                    message,
                    queue=queue,
                    exc=exc,
                    attempt=attempt,
                    max_retries=self.max_retries,
                    backoff_base=self.retry_backoff_base,
                    backoff_max=self.retry_backoff_max,
                    headers=headers,
                    event=event,
                    handler=subscription.handler,
                )
            else:
                dead_letter(
                    self._publish_copies,
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


#: EVENTS_CONSUMED's child per (event type, queue): ``labels()`` costs more than a dict lookup.
_CONSUMED: dict[tuple[str, str], Any] = {}


def _consumed_counter(event_type: str, queue: str) -> Any:
    counter = _CONSUMED.get((event_type, queue))
    if counter is None:
        counter = EVENTS_CONSUMED.labels(event_type, queue)
        if len(_CONSUMED) < 10_000:
            _CONSUMED[(event_type, queue)] = counter
    return counter


def _int(value: object, default: int) -> int:
    if isinstance(value, (int, str, bytes)):
        try:
            return int(value)
        except ValueError:
            return default
    return default
