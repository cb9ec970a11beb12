"""A subscription's consumer thread: ConsumerMixin reconnecting forever, with batched acks."""

from __future__ import annotations

import logging
import select
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from kombu.connection import Connection
from kombu.entity import Queue
from kombu.mixins import ConsumerMixin

from events.acks import AckBatch, batch_size
from kitty_tasks.core.amqp_internals import buffer_reads, has_buffered_frame
from kitty_tasks.core.connection import RECONNECT, RECONNECT_START
from kitty_tasks.core.declarer import apply_topology
from kitty_tasks.core.topology import Topology

__all__ = ["CONSUME_RECV_CHUNK", "STOP_POLL", "Process", "SubscriptionConsumer"]

logger = logging.getLogger(__name__)

#: Handles one delivery, then settles it: ``ack(message)``, or rejects it itself.
Process = Callable[[Any, Callable[[Any], None]], None]

#: Bytes asked of the consumer's socket per read: a few messages per syscall, while the
#: remainder py-amqp copies at every frame read stays small.
CONSUME_RECV_CHUNK = 16 * 1024
#: Seconds a consumer waits for a delivery before it checks whether it should stop.
STOP_POLL = 0.25

LOG_RECONNECT = "broker connection of %s lost (%r); reconnecting in %.1fs"
LOG_WORKER_CRASH = "consumer of %s crashed; restarting"
LOG_ACK_LOST = "acks of handled events from %s not sent (%s); the broker redelivers them"


class _Stopping(Exception):
    """Raised inside the reconnect loop to abandon it when the bus is stopping."""


class SubscriptionConsumer(ConsumerMixin):  # type: ignore[misc]
    """Consumes one subscription's queue on a connection of its own; reconnects forever.

    Args:
        connection: the bus's connection, cloned for this consumer.
        queue: the subscription's queue.
        prefetch_count: deliveries held unacked at once.
        process: handles and settles each delivery.
        topologies: declared on every (re)connect, in order.
        stopping: the bus's stop signal, cutting waits short.
    """

    def __init__(
        self,
        connection: Connection,
        *,
        queue: str,
        prefetch_count: int,
        process: Process,
        topologies: Sequence[Topology],
        stopping: threading.Event,
    ) -> None:
        self.connection = connection.clone()
        self.queue = queue
        self.prefetch_count = prefetch_count
        self.process = process
        self.topologies = tuple(topologies)
        self.stopping = stopping
        self.ready = threading.Event()
        self._acks: AckBatch | None = None

    def get_consumers(self, consumer: Any, channel: Any) -> list[Any]:
        queue = Queue(self.queue, no_declare=True)
        return [
            consumer(queues=[queue], on_message=self.on_message, prefetch_count=self.prefetch_count)
        ]

    @contextmanager
    def establish_connection(self) -> Iterator[Connection]:
        with self.create_connection() as conn:
            conn.ensure_connection(self.on_connection_error, self.connect_max_retries, **RECONNECT)
            # Redeclared on every (re)connect: a restarted broker may have lost the queue.
            for topology in self.topologies:
                apply_topology(conn, topology)
            yield conn

    @contextmanager
    def extra_context(self, connection: Connection, channel: Any) -> Iterator[None]:
        """Batch this channel's acks; flush them before the channel closes (or they redeliver)."""
        if connection.transport.driver_type != "amqp":
            # Kombu's virtual transports (memory, redis, ...) ack one tag even with multiple.
            yield
            return
        acks = AckBatch(channel, batch_size(self.prefetch_count))
        self._acks = acks
        try:
            yield
        finally:
            self._acks = None
            try:
                acks.flush()
            except (*connection.connection_errors, *connection.channel_errors) as err:
                logger.warning(LOG_ACK_LOST, self.queue, err)

    def on_connection_error(self, exc: BaseException, interval: float) -> None:
        if self.should_stop:
            raise _Stopping from exc
        self.ready.clear()
        logger.warning(LOG_RECONNECT, self.queue, exc, interval)

    def on_consume_ready(
        self, connection: Any, channel: Any, consumers: Any, **kwargs: Any
    ) -> None:
        self.ready.set()

    def on_consume_end(self, connection: Any, channel: Any) -> None:
        self.ready.clear()

    def on_iteration(self) -> None:
        # Kombu's loop calls this before each wait: what was handled is acked first.
        if self._acks is not None:
            self._acks.flush()

    def on_message(self, message: Any) -> None:
        if self.should_stop:
            # Not started: left unacked, the broker gives it to the next consumer.
            return
        self.process(message, self._ack)

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
        """Kombu's consume loop, or on py-amqp a read loop of our own (``_read_loop``)."""
        if self.connection.transport.driver_name != "py-amqp":
            yield from super().consume(limit, timeout, safety_interval, **kwargs)
            return
        with self.consumer_context(**kwargs) as (conn, _channel, _consumers):
            yield from self._read_loop(conn, safety_interval)

    def _read_loop(self, conn: Connection, idle_wait: float) -> Iterator[None]:
        """Read frames as they come; ack the batch whenever nothing more is waiting.

        Kept, thin, because the gain is large (benchmarks/RESULTS.md, F6): Kombu's
        ``drain_events(timeout=...)`` sets and resets the socket timeout for every frame
        and py-amqp reads each frame part with a ``recv`` of its own; nor can Kombu's
        loop tell whether more frames wait, so it acks before every wait. Re-measured for
        issue 10 (20k events, prefetch 500, no-op handler): 50-56 us CPU an event here,
        95-100 us with Kombu's loop and the same hooks.
        """
        raw = conn.connection
        transport = raw.transport
        buffer_reads(transport, CONSUME_RECV_CHUNK)  # plain TCP only; TLS reads as before
        poller = select.poll()
        poller.register(transport.sock, select.POLLIN)

        def frame_waiting(wait: float) -> bool:
            return has_buffered_frame(transport) or bool(poller.poll(wait * 1000))

        while not self.should_stop:
            acks = self._acks
            if not frame_waiting(0):
                # Nothing more to handle right now: ack what was handled, then wait.
                if acks is not None:
                    acks.flush()
                if not frame_waiting(idle_wait):
                    conn.heartbeat_check()
                    continue
            elif acks is not None and acks.due():
                acks.flush()
            raw.blocking_read(None)
            yield

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
                logger.exception(LOG_WORKER_CRASH, self.queue)
                self.stopping.wait(RECONNECT_START)
        self.ready.clear()
