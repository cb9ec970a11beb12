"""One broker connection per RPC endpoint: locked writes, one socket-reading loop, reconnects."""

from __future__ import annotations

import contextlib
import logging
import selectors
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

import amqp
from kombu.connection import Connection

from kitty_tasks.core.amqp_internals import (
    BASIC_PUBLISH,
    WriteBatcher,
    buffer_reads,
    has_buffered_frame,
    lock_writes,
)
from kitty_tasks.core.connection import (
    CONNECT_TIMEOUT,
    open_connection,
    reconnect_delays,
    safe_url,
)
from kitty_tasks.core.errors import ConfigurationError
from rpc.errors import NotConnected

__all__ = ["DEFAULT_CONNECT_TIMEOUT", "DEFAULT_HEARTBEAT", "Link"]

logger = logging.getLogger(__name__)

#: Seconds of AMQP heartbeat: a silently dead peer is noticed within about twice this.
DEFAULT_HEARTBEAT = 30.0
#: Seconds allowed for the TCP and AMQP handshake of one connection attempt.
DEFAULT_CONNECT_TIMEOUT = CONNECT_TIMEOUT
#: Bytes asked of the socket per read; the surplus waits in the transport's buffer.
RECV_CHUNK = 65536

LOG_LOST = "%s: broker connection lost (%s: %s); reconnecting"
LOG_RETRY = "%s: reconnect failed (%s: %s); next attempt in %.1f s"
LOG_BACK = "%s: reconnected to the broker"

Setup = Callable[[amqp.Channel], None]


class Link:
    """A py-amqp connection and channel whose writes are serialised by a lock.

    Any thread may publish or ack on ``channel``: every frame write takes ``write_lock``
    (the connection's frame writer is wrapped), so frames of two messages never interleave.
    Exactly one thread reads, in ``serve``, and it waits on the socket itself, never sleeping.
    """

    def __init__(
        self,
        url: str,
        *,
        name: str,
        heartbeat: float = DEFAULT_HEARTBEAT,
        connect_timeout: float = DEFAULT_CONNECT_TIMEOUT,
    ) -> None:
        self.url = url
        self.name = name
        self.heartbeat = heartbeat
        self.connect_timeout = connect_timeout
        self.write_lock = threading.RLock()
        self._batcher: WriteBatcher | None = None
        #: Set while connected and set up; callers wait on it during a reconnect.
        self.ready = threading.Event()
        #: Increases with every successful connect, so stale deliveries can be recognised.
        self.generation = 0
        self.channel: amqp.Channel | None = None
        self._kombu: Connection | None = None
        self._raw: amqp.Connection | None = None
        #: What ``serve`` waits on: the broker socket and a wake-up pair; from ``open``
        #: until ``dispose``.
        self._selector: selectors.BaseSelector | None = None
        self._wake_r: socket.socket | None = None
        self._wake_w: socket.socket | None = None
        self._sock: socket.socket | None = None
        self._next_tick = 0.0

    def open(self) -> amqp.Channel:
        """Connect (dropping any previous connection) and open the one channel."""
        self.close(clean=False)
        # One attempt: the reconnect loop in ``serve`` does the waiting between attempts.
        connection = open_connection(
            self.url,
            max_retries=0,
            heartbeat=self.heartbeat,
            connect_timeout=self.connect_timeout,
        )
        try:
            raw = connection.connection
            if not isinstance(raw, amqp.Connection):
                raise ConfigurationError(
                    f"RPC needs an amqp:// broker URL (py-amqp), not {safe_url(self.url)!r}"
                )
            batcher = lock_writes(raw, self.write_lock)
            channel = raw.channel()
        except BaseException:
            _quietly(connection.collect)
            raise
        self._kombu, self._raw, self.channel = connection, raw, channel
        self._batcher = batcher
        self._sock = raw.transport.sock
        buffer_reads(raw.transport, RECV_CHUNK)
        self._selector_for_serve().register(self._sock, selectors.EVENT_READ)
        self._next_tick = time.monotonic()
        self.generation += 1
        return channel

    def publish(
        self, message: amqp.Message, exchange: str, routing_key: str, *, mandatory: bool = False
    ) -> None:
        """Send one message on the channel; safe from any thread, never reads the socket."""
        channel = self.channel
        if channel is None:
            raise NotConnected("the broker connection is closed")
        # Not channel.basic_publish: py-amqp's version drains the socket (to notice
        # connection.blocked), which would race with the one reading thread.
        channel.send_method(
            BASIC_PUBLISH, "Bssbb", (0, exchange, routing_key, mandatory, False), message
        )

    def reply_and_ack(
        self, message: amqp.Message | None, routing_key: str, delivery_tag: int | None
    ) -> None:
        """Publish a reply (default exchange) and ack a request in one socket write."""
        channel, batcher = self.channel, self._batcher
        if channel is None or batcher is None or batcher.flush is None:
            raise NotConnected("the broker connection is closed")
        flush = batcher.flush
        # One write instead of two: syscalls, not Python, dominate a small reply's cost.
        with self.write_lock:
            batcher.pending = []
            try:
                if message is not None:
                    channel.send_method(
                        BASIC_PUBLISH, "Bssbb", (0, "", routing_key, False, False), message
                    )
                if delivery_tag is not None:
                    channel.basic_ack(delivery_tag)
            finally:
                data, batcher.pending = b"".join(batcher.pending), None
            if data:
                flush(data)

    def close(self, *, clean: bool = True) -> None:
        """Close the connection: with the AMQP handshake when ``clean``, else drop the socket."""
        self.ready.clear()
        if self._sock is not None and self._selector is not None:
            _quietly(self._selector.unregister, self._sock)
        self._sock = None
        raw, connection = self._raw, self._kombu
        self._raw = self._kombu = None
        self.channel = None
        if raw is not None and clean:
            _quietly(raw.close)
        if connection is not None:
            _quietly(connection.collect)

    def wake(self) -> None:
        """Interrupt ``serve``'s wait so that it looks at its stop flag and timers again."""
        wake_w = self._wake_w
        if wake_w is None:
            return  # nothing serves
        # A full pipe means a wake-up is pending already; a closed one, that serving ended.
        with contextlib.suppress(OSError):
            wake_w.send(b"\0")

    def dispose(self) -> None:
        """Close the connection and release the wake-up socket pair; ``open`` makes a new one."""
        self.close(clean=True)
        selector, wake_r, wake_w = self._selector, self._wake_r, self._wake_w
        self._selector = self._wake_r = self._wake_w = None
        for resource in (selector, wake_r, wake_w):
            if resource is not None:
                _quietly(resource.close)

    def _selector_for_serve(self) -> selectors.BaseSelector:
        if self._selector is None:
            self._wake_r, self._wake_w = socket.socketpair()
            self._wake_r.setblocking(False)
            self._wake_w.setblocking(False)
            self._selector = selectors.DefaultSelector()
            self._selector.register(self._wake_r, selectors.EVENT_READ)
        return self._selector

    def serve(
        self,
        stopping: threading.Event,
        *,
        setup: Setup,
        on_lost: Callable[[BaseException], None],
        on_idle: Callable[[], float | None] | None = None,
    ) -> None:
        """Read and dispatch frames until ``stopping`` is set; reconnect and ``setup`` after a loss.

        ``on_idle`` runs on every turn and returns the seconds until it wants to run again.
        """
        while not stopping.is_set():
            if self._raw is None and not self._reconnect(stopping, setup):
                return
            raw = self._raw
            assert raw is not None
            try:
                timeout = self._heartbeat_tick(raw)
                if on_idle is not None:
                    wanted = on_idle()
                    if wanted is not None:
                        timeout = wanted if timeout is None else min(timeout, wanted)
                if self._wait(raw, timeout):
                    raw.blocking_read(None)
            except Exception as err:
                if stopping.is_set():
                    return
                logger.warning(LOG_LOST, self.name, type(err).__name__, err)
                self.close(clean=False)
                on_lost(err)

    def _heartbeat_tick(self, raw: amqp.Connection) -> float | None:
        if not raw.heartbeat:
            return None
        interval = raw.heartbeat / 4
        now = time.monotonic()
        if now >= self._next_tick:
            raw.heartbeat_tick()
            self._next_tick = now + interval
        return max(0.0, self._next_tick - now)

    def _wait(self, raw: amqp.Connection, timeout: float | None) -> bool:
        """Wait until the socket has data (True), or a wake-up or the timeout (False)."""
        # A frame half-read before a timeout, or TLS-buffered bytes, are invisible to select.
        if has_buffered_frame(raw.transport):
            return True
        readable = False
        selector, wake_r = self._selector, self._wake_r
        assert selector is not None  # made by open()
        assert wake_r is not None
        for key, _ in selector.select(timeout):
            if key.fileobj is wake_r:
                _quietly(wake_r.recv, 4096)
            else:
                readable = True
        return readable

    def _reconnect(self, stopping: threading.Event, setup: Setup) -> bool:
        delays = reconnect_delays()
        while not stopping.is_set():
            try:
                setup(self.open())
            except Exception as err:
                self.close(clean=False)
                delay = next(delays)
                logger.warning(LOG_RETRY, self.name, type(err).__name__, err, delay)
                if stopping.wait(delay):
                    return False
            else:
                logger.info(LOG_BACK, self.name)
                self.ready.set()
                return True
        return False


def _quietly(fn: Callable[..., Any], *args: Any) -> None:
    """Call ``fn``; a cleanup step that fails must not hide the error being handled."""
    try:
        fn(*args)
    except Exception as err:
        logger.debug("cleanup step %r failed: %s", fn, err)
