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
from amqp.method_framing import frame_writer
from kombu.connection import Connection

from rpc.errors import NotConnected

__all__ = ["DEFAULT_CONNECT_TIMEOUT", "DEFAULT_HEARTBEAT", "Link"]

logger = logging.getLogger(__name__)

#: Seconds of AMQP heartbeat: a silently dead peer is noticed within about twice this.
DEFAULT_HEARTBEAT = 30.0
#: Seconds allowed for the TCP and AMQP handshake of one connection attempt.
DEFAULT_CONNECT_TIMEOUT = 5.0
#: Reconnect backoff: first retry after this many seconds, doubling up to the cap.
RECONNECT_FIRST_DELAY = 0.1
RECONNECT_MAX_DELAY = 5.0
#: Bytes asked of the socket per read; the surplus waits in the transport's buffer.
RECV_CHUNK = 65536

LOG_LOST = "%s: broker connection lost (%s: %s); reconnecting"
LOG_RETRY = "%s: reconnect failed (%s: %s); next attempt in %.1f s"
LOG_BACK = "%s: reconnected to the broker"

_BASIC_PUBLISH = amqp.spec.Basic.Publish

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
        self._batcher: _WriteBatcher | None = None
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
        connection = Connection(
            self.url, heartbeat=self.heartbeat, connect_timeout=self.connect_timeout
        )
        try:
            connection.connect()
            raw = connection.connection
            if not isinstance(raw, amqp.Connection):
                raise ValueError(f"RPC needs an amqp:// broker URL (py-amqp), not {self.url!r}")
            batcher = _WriteBatcher(raw.transport.write)
            write = frame_writer(raw, batcher)
            lock = self.write_lock

            def locked_write(*args: Any) -> Any:
                with lock:
                    return write(*args)

            raw.frame_writer = locked_write
            channel = raw.channel()
        except BaseException:
            _quietly(connection.collect)
            raise
        self._kombu, self._raw, self.channel = connection, raw, channel
        self._batcher = batcher
        self._sock = raw.transport.sock
        _buffer_reads(raw.transport)
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
            _BASIC_PUBLISH, "Bssbb", (0, exchange, routing_key, mandatory, False), message
        )

    def reply_and_ack(
        self, message: amqp.Message | None, routing_key: str, delivery_tag: int | None
    ) -> None:
        """Publish a reply (default exchange) and ack a request in one socket write."""
        channel, batcher = self.channel, self._batcher
        if channel is None or batcher is None:
            raise NotConnected("the broker connection is closed")
        # One write instead of two: syscalls, not Python, dominate a small reply's cost.
        with self.write_lock:
            batcher.pending = []
            try:
                if message is not None:
                    channel.send_method(
                        _BASIC_PUBLISH, "Bssbb", (0, "", routing_key, False, False), message
                    )
                if delivery_tag is not None:
                    channel.basic_ack(delivery_tag)
            finally:
                data, batcher.pending = b"".join(batcher.pending), None
            if data:
                batcher.flush(data)

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
        transport = raw.transport
        # A frame half-read before a timeout, or TLS-buffered bytes, are invisible to select.
        if getattr(transport, "_read_buffer", b""):
            return True
        pending = getattr(transport.sock, "pending", None)
        if pending is not None and pending():
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
        delay = RECONNECT_FIRST_DELAY
        while not stopping.is_set():
            try:
                setup(self.open())
            except Exception as err:
                self.close(clean=False)
                logger.warning(LOG_RETRY, self.name, type(err).__name__, err, delay)
                if stopping.wait(delay):
                    return False
                delay = min(delay * 2, RECONNECT_MAX_DELAY)
            else:
                logger.info(LOG_BACK, self.name)
                self.ready.set()
                return True
        return False


class _WriteBatcher:
    """The transport as py-amqp's frame writer sees it: writes through, or collects a batch."""

    def __init__(self, write: Callable[[Any], None]) -> None:
        self.flush = write
        self.pending: list[bytes] | None = None

    def write(self, data: Any) -> None:
        """Write ``data`` now, or keep a copy (the frame writer reuses its buffer) for the batch."""
        if self.pending is None:
            self.flush(data)
        else:
            self.pending.append(bytes(data))


def _buffer_reads(transport: Any) -> None:
    """Make the transport read whole socket buffers instead of one frame part per syscall.

    py-amqp asks ``recv`` for exactly the bytes it needs (header, payload, end octet), so a
    message costs nine syscalls and nine waits. Asking for up to ``RECV_CHUNK`` bytes leaves the
    surplus in the transport's own ``_read_buffer``, which py-amqp already consumes first and
    ``Link._wait`` checks before waiting on the socket. Plain TCP only: TLS keeps its own buffer.
    """
    sock = getattr(transport, "sock", None)
    if sock is None or not hasattr(transport, "_quick_recv") or hasattr(sock, "pending"):
        return
    recv: Callable[[int], bytes] = sock.recv

    def recv_chunk(n: int) -> bytes:
        return recv(max(n, RECV_CHUNK))

    transport._quick_recv = recv_chunk


def _quietly(fn: Callable[..., Any], *args: Any) -> None:
    """Call ``fn``; a cleanup step that fails must not hide the error being handled."""
    try:
        fn(*args)
    except Exception as err:
        logger.debug("cleanup step %r failed: %s", fn, err)
