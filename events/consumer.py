"""A subscription's consumer thread: reconnecting consume loop, batched acks, fast socket reads."""

from __future__ import annotations

import logging
import select
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import amqp
from kombu.connection import Connection
from kombu.entity import Queue
from kombu.mixins import ConsumerMixin

from events.connection import RECONNECT_MAX, RECONNECT_START, RECONNECT_STEP
from events.errors import PublishError
from kitty_tasks.core.declarer import apply_topology
from kitty_tasks.core.topology import Topology

__all__ = ["ACK_BATCH", "ACK_DELAY", "AckBatch", "Process", "SubscriptionConsumer"]

logger = logging.getLogger(__name__)

#: Handles one delivery, then settles it with the given ``ack(message)``.
Process = Callable[[Any, Callable[[Any], None]], None]

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
#: Seconds a consumer waits for a delivery before it checks whether it should stop.
STOP_POLL = 0.25

LOG_COPY_FAILED = "could not publish the retry/dead-letter copy of %s from %s; requeued: %s"
LOG_BUG = "unexpected error while processing a delivery from %s; requeued"
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
        process: handles each delivery.
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
            consumer(
                queues=[queue],
                on_message=self.on_message,
                prefetch_count=self.prefetch_count,
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
            # Redeclared on every (re)connect: a restarted broker may have lost the queue.
            for topology in self.topologies:
                apply_topology(conn, topology)
            yield conn

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

    def on_message(self, message: Any) -> None:
        if self.should_stop:
            # Not started: left unacked, the broker gives it to the next consumer.
            return
        try:
            self.process(message, self._ack)
        except (*self.connection.connection_errors, *self.connection.channel_errors):
            raise
        except PublishError as err:
            logger.error(LOG_COPY_FAILED, message.properties.get("message_id"), self.queue, err)
            self._requeue_later(message)
        except Exception:
            logger.exception(LOG_BUG, self.queue)
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
            acks = AckBatch(channel, max(1, min(ACK_BATCH, self.prefetch_count // 2)))
            self._acks = acks
            try:
                raw = conn.connection
                if isinstance(raw, amqp.Connection) and _readable_by_hand(raw.transport):
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
                    logger.warning(LOG_ACK_LOST, self.queue, err)

    def _read_loop(
        self, conn: Connection, raw: amqp.Connection, acks: AckBatch, idle_wait: float
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
        self.stopping.wait(1.0)
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
                logger.exception(LOG_WORKER_CRASH, self.queue)
                self.stopping.wait(RECONNECT_START)
        self.ready.clear()


class AckBatch:
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


def _readable_by_hand(transport: Any) -> bool:
    """True if the transport has the private py-amqp attributes ``_read_loop`` relies on."""
    return hasattr(transport, "_quick_recv") and hasattr(transport, "_read_buffer")


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
