"""EventBus: publish typed events to ``kitty.events`` and consume them by topic pattern."""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import Future
from types import TracebackType
from typing import Any

from kombu.connection import Connection
from pydantic import BaseModel

from events.consuming import ConsumerThreads
from events.delivery import EventDelivery, current_event
from events.envelope import Event
from events.errors import ConfigurationError, InvalidEvent, NotConnected
from events.pipeline import ConfirmPipeline
from events.publishing import (
    DEFAULT_POOL_LIMIT,
    NOT_CONNECTED,
    PublisherPool,
    build_event,
    caller_properties,
    encode,
    end_sends,
    start_sends,
)
from events.routing import check_pattern
from events.schemas import SchemaRegistry, default_registry
from events.subscriptions import (
    EventHandler,
    Subscription,
    check_queue_name,
    check_subscription,
    declare_subscription,
    subscription_topology,
)
from kitty_tasks.core.connection import open_connection, user_of
from kitty_tasks.core.failure import FailurePolicy
from kitty_tasks.core.metrics import serve_metrics
from kitty_tasks.core.publisher import OutgoingMessage
from kitty_tasks.core.settings import Settings, get_settings
from kitty_tasks.core.shutdown import stop_on_signals
from kitty_tasks.core.topology import Topology, subscriber_queue_name

__all__ = ["ANONYMOUS_SOURCE", "DEFAULT_PREFETCH", "EventBus"]

logger = logging.getLogger(__name__)

#: Events a subscriber may hold unacked at once (per subscription). Handlers run one at a
#: time, so prefetch x the slowest handler's time must stay well under the broker's
#: consumer_timeout (30 min by default): 100 x 10 s is 17 min.
DEFAULT_PREFETCH = 100
#: Source of events published by a bus built without one.
ANONYMOUS_SOURCE = "unknown-service"


class EventBus:
    """Publishes events to ``kitty.events`` and runs subscriptions, each on its own thread.

    Publishing uses a Kombu pool of connections, each with a confirm-mode
    channel; every publish waits for the broker's confirm and is ``mandatory``;
    ``await apublish(...)`` is ``publish`` for coroutines.
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
        verify_source: bool = False,
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
        self.verify_source = verify_source
        #: The connection's broker user, sent as ``user_id`` (None: the broker's default).
        self.user_id = user_of(self.url)
        self.management_url = settings.management_url
        self.metrics_port = settings.metrics_port
        #: Events confirmed by the broker but routed to no queue (only with allow_unroutable).
        self.unroutable_count = 0
        self._connection: Connection | None = None
        self._pool: PublisherPool | None = None
        self._subscriptions: dict[str, Subscription] = {}
        self._threads = ConsumerThreads(self._delivery, declare=declare)
        self._lock = threading.RLock()
        self._ladder_declared = False
        self._pipeline = ConfirmPipeline(
            self._publisher_pool, timeout=self.publish_timeout, on_unroutable=self._count_unroutable
        )

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
        self._pipeline.close()

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
        current = current_event.get()
        if current is not None:
            # Published while handling another event: same conversation, caused by it.
            correlation_id = correlation_id or current.correlation_id or current.event_id
            causation_id = causation_id or current.event_id
            traceparent = traceparent or current.traceparent
        return build_event(
            event_type,
            {} if data is None else data,
            source=self.source,
            version=version or self.registry.latest(event_type) or 1,
            registry=self.registry,
            correlation_id=correlation_id,
            causation_id=causation_id,
            traceparent=traceparent,
            event_id=event_id,
        )

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
        return self._send([event], caller_properties(properties), allow_unroutable)[0]

    async def apublish(
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
        """``publish`` for coroutines: the same arguments, confirm and errors; the loop stays free.

        Cancelled before its batch goes out, the event is not sent; after that, cancelling
        stops the wait only and the event may still arrive.
        """
        sent = self.publish_pipelined(
            event_type,
            data,
            correlation_id,
            causation_id=causation_id,
            traceparent=traceparent,
            version=version,
            properties=properties,
            allow_unroutable=allow_unroutable,
        )
        return await asyncio.wrap_future(sent)

    def publish_pipelined(
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
    ) -> Future[Event]:
        """Hand one event to the bus's publishing thread; the Future ends with its confirm.

        For many threads (or coroutines) publishing at once: what they hand over while a
        batch waits for its confirms goes out as the next batch, with one wait for all of
        it. Bad input raises here; the Future holds the errors ``publish`` raises.
        """
        # Built and checked here, so bad input raises at once; sent by the pipeline's one
        # thread, which holds a pooled connection (its confirm channel) per batch, so
        # these and publish from other threads never share a channel. Concurrent
        # apublishes share one confirm wait: 100 of them took 13 ms of CPU in one batch,
        # against 26 ms with a thread per publish (and 8 connections instead of 1).
        event = self.event(
            event_type,
            data,
            correlation_id,
            causation_id=causation_id,
            traceparent=traceparent,
            version=version,
        )
        (event,), sends = start_sends([event])
        try:
            message = encode(
                event,
                self._signed(caller_properties(properties)),
                max_bytes=self.max_message_bytes,
            )
            self._publisher_pool()  # NotConnected now, not from the pipeline's thread
        except BaseException as err:
            end_sends(sends, err)
            raise
        allow = self.allow_unroutable if allow_unroutable is None else allow_unroutable
        sent = self._pipeline.submit(event, message, allow)
        if sends:
            # Ended by the pipeline's thread when the confirm (or the error) comes.
            sent.add_done_callback(lambda done: end_sends(sends, _error_of(done)))
        return sent

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
            return self._send(prepared, {}, allow_unroutable)
        return prepared

    def _signed(self, extra: Mapping[str, Any]) -> Mapping[str, Any]:
        """``extra`` with this bus's broker user as ``user_id``, when the URL names one."""
        if self.user_id is None:
            return extra
        # RabbitMQ refuses a user_id other than the connection's: consumers can trust it.
        return {**extra, "user_id": self.user_id}

    def _send(
        self, events: Sequence[Event], extra: Mapping[str, Any], allow_unroutable: bool | None
    ) -> list[Event]:
        """Publish ``events``; returns them as sent (with their traceparent when tracing)."""
        extra = self._signed(extra)
        events, sends = start_sends(events)
        try:
            messages = [encode(event, extra, max_bytes=self.max_message_bytes) for event in events]
            allow = self.allow_unroutable if allow_unroutable is None else allow_unroutable
            unroutable = self._publisher_pool().send(
                events, messages, allow_unroutable=allow, timeout=self.publish_timeout
            )
        except BaseException as err:
            end_sends(sends, err)
            raise
        end_sends(sends)
        if unroutable:
            self._count_unroutable(unroutable)
        return list(events)

    def _count_unroutable(self, events: int) -> None:
        with self._lock:
            self.unroutable_count += events

    def _publish_copies(self, messages: Sequence[OutgoingMessage]) -> None:
        """Publish retried or dead-lettered copies, which must reach their queue."""
        if self.user_id is not None:
            # Signed by this bus's user: verify_source trusts its own retry copies.
            messages = [
                OutgoingMessage(
                    m.body, m.exchange, m.routing_key, {**m.properties, "user_id": self.user_id}
                )
                for m in messages
            ]
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
        handler: EventHandler,
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
        check_subscription(pattern, handler)
        if queue is None:
            if not self._explicit_source:
                raise ConfigurationError(
                    "subscribe() without queue= names the queue after the source: "
                    "build the bus with EventBus(url, source='my-service')"
                )
            queue = subscriber_queue_name(self.source, pattern)
        queue = check_queue_name(queue)
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
                subscription_topology(queue, pattern),
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
        topology = subscription_topology(name, pattern, durable=durable)
        with self._publisher_pool().acquire() as connection:
            self._declare(connection, topology)
        return name

    @property
    def subscriptions(self) -> tuple[Subscription, ...]:
        """The subscriptions made so far."""
        return tuple(self._subscriptions.values())

    def _declare(self, connection: Connection, topology: Topology) -> None:
        declare_subscription(connection, topology, with_ladder=not self._ladder_declared)
        self._ladder_declared = True

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
        self._threads.start(connection, self.subscriptions)
        if self.metrics_port is not None:
            serve_metrics(self.metrics_port)
        if not block:
            return
        # Wait on the stop event, never in Thread.join: on Python 3.11 a Ctrl-C that lands
        # inside join() can mark a still-running thread as stopped (the bpo-45274 fix),
        # after which stop() would not wait for its event in hand.
        with stop_on_signals(self._threads.request_stop):
            while not self._threads.stopping.wait(0.2):
                if not self._threads.running:
                    return
        logger.info("stopping; finishing the events in hand")
        self.stop()

    def wait_until_consuming(self, timeout: float = 10.0) -> bool:
        """Wait until every subscription has a consumer on the broker; False on timeout."""
        return self._threads.wait_until_consuming(timeout)

    def stop(self, timeout: float | None = 30.0) -> None:
        """Stop consuming: each handler finishes (and acks) its event in hand, then returns.

        Callable from another thread, a handler, or a signal handler; waits for the
        consumer threads unless called from one of them.
        """
        self._threads.stop(timeout)

    def _delivery(self, subscription: Subscription) -> EventDelivery:
        """How ``subscription``'s deliveries are handled, retried and dead-lettered."""
        policy = FailurePolicy(
            self._publish_copies,
            max_retries=self.max_retries,
            backoff_base=self.retry_backoff_base,
            backoff_max=self.retry_backoff_max,
        )
        return EventDelivery(
            subscription.queue,
            subscription.handler,
            self.registry,
            policy,
            require_schemas=self.require_schemas,
            max_message_bytes=self.max_message_bytes,
            verify_source=self.verify_source,
            own_user=self.user_id,
        )


def _error_of(done: Any) -> BaseException | None:
    """The error a settled Future ended with, or None (cancelled counts as none sent)."""
    if done.cancelled():
        return None
    error: BaseException | None = done.exception()
    return error
