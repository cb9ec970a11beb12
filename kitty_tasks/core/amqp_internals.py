"""Every use of py-amqp's private parts, in one place, each with what it buys.

py-amqp (through Kombu) is the platform's AMQP client. Its public API makes one
``sendall`` per published message, polls the socket before each publish, and reads
each frame part with a ``recv`` of its own. The three hot paths (a batch of
confirmed publishes, an event consumer's reads, an RPC link's reads and reply+ack)
go faster by reaching past that API. They do it only through this module, whose
assumptions ``missing_internals`` checks (a unit test fails when a py-amqp release
removes one); ``pyproject.toml`` pins ``amqp`` to the versions it was checked on.

Measured in ``benchmarks/`` (RESULTS.md, F5/F6 and the RPC round-trip cases):

- ``frame_writer`` into a list: a batch of publishes leaves in one socket write instead
  of one per message, the larger part of the event batch publish gain (F5).
- ``transport._quick_recv`` reading up to a chunk: a few messages per ``recv`` instead of
  three syscalls per frame, on the event consumer (F6) and the RPC link.
- ``transport._read_buffer``: tells a waiting reader that a frame is already buffered,
  which ``select`` cannot see once reads are chunked.
- ``Message._serialize_properties``, which the frame writer calls for a message's
  properties: ``EncodedMessage`` answers it from ``core.amqp_encoding`` (the same bytes,
  repeated header values encoded once), a third of a group's client CPU (issue 15).
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable
from typing import Any

import amqp
from amqp.method_framing import frame_writer
from amqp.serialization import dumps
from amqp.transport import TCPTransport

from kitty_tasks.core.amqp_encoding import PROPERTIES

__all__ = [
    "BASIC_PUBLISH",
    "EncodedMessage",
    "WriteBatcher",
    "buffer_reads",
    "has_buffered_frame",
    "lock_writes",
    "missing_internals",
    "publish_arguments",
    "readable_by_hand",
    "write_frames_into",
]

#: The basic.publish method signature (class 60, method 40).
BASIC_PUBLISH = amqp.spec.Basic.Publish


class EncodedMessage(amqp.Message):  # type: ignore[misc]
    """An ``amqp.Message`` whose properties the frame writer gets from the platform's encoder."""

    __slots__ = ()

    def _serialize_properties(self) -> bytes:
        # py-amqp's frame writer calls this; the bytes are py-amqp's own (amqp_encoding).
        return PROPERTIES.properties(self.properties)


class WriteBatcher:
    """The transport as py-amqp's frame writer sees it: writes through, or collects a batch."""

    def __init__(self, write: Callable[[Any], None] | None = None) -> None:
        self.flush = write
        #: Frames kept for one write; None writes each frame through at once.
        self.pending: list[bytes] | None = None if write is not None else []

    def write(self, data: Any) -> None:
        """Write ``data`` now, or keep a copy (the frame writer reuses its buffer)."""
        if self.pending is None:
            assert self.flush is not None
            self.flush(data)
        else:
            self.pending.append(bytes(data))


def write_frames_into(connection: amqp.Connection, sink: WriteBatcher) -> Callable[..., Any]:
    """A py-amqp frame writer for ``connection`` that writes into ``sink`` instead of the socket.

    Called as ``writer(1, channel_id, BASIC_PUBLISH, publish_arguments(...), message)``.
    """
    writer: Callable[..., Any] = frame_writer(connection, sink)
    return writer


def lock_writes(connection: amqp.Connection, lock: threading.RLock) -> WriteBatcher:
    """Make every frame ``connection`` writes take ``lock``; returns the batcher they pass.

    Lets any thread publish or ack on a connection that one other thread reads,
    without frames of two messages interleaving. The batcher collects frames
    (set ``pending`` to a list) so a reply and an ack leave in one write.
    """
    batcher = WriteBatcher(connection.transport.write)
    write = frame_writer(connection, batcher)

    def locked_write(*args: Any) -> Any:
        with lock:
            return write(*args)

    connection.frame_writer = locked_write
    return batcher


def publish_arguments(exchange: str, routing_key: str, *, mandatory: bool) -> bytes:
    """basic.publish's encoded arguments (worth caching per exchange and key)."""
    return bytes(dumps("Bssbb", (0, exchange, routing_key, mandatory, False)))


def readable_by_hand(transport: Any) -> bool:
    """True if ``transport`` has the private attributes chunked reads rely on (plain TCP)."""
    return (
        hasattr(transport, "_quick_recv")
        and hasattr(transport, "_read_buffer")
        and not hasattr(getattr(transport, "sock", None), "pending")  # TLS buffers itself
    )


def buffer_reads(transport: Any, chunk: int) -> bool:
    """Make ``transport`` ask its socket for up to ``chunk`` bytes per read; False if it cannot.

    py-amqp asks ``recv`` for exactly each frame part (header, payload, end octet):
    three syscalls per frame. The surplus of a larger read stays in the transport's
    ``_read_buffer``, which py-amqp consumes first.
    """
    if not readable_by_hand(transport):
        return False
    recv: Callable[[int], bytes] = transport.sock.recv

    def recv_chunk(n: int) -> bytes:
        return recv(max(n, chunk))

    transport._quick_recv = recv_chunk
    return True


def has_buffered_frame(transport: Any) -> bool:
    """True when bytes of a frame wait in the transport (or TLS) buffer, invisible to select."""
    if getattr(transport, "_read_buffer", b""):
        return True
    pending = getattr(getattr(transport, "sock", None), "pending", None)
    return bool(pending is not None and pending())


def missing_internals() -> list[str]:
    """The private py-amqp names this module relies on that this py-amqp does not have."""
    missing = []
    left, right = socket.socketpair()
    try:
        transport = TCPTransport("127.0.0.1:1")
        transport.sock = left
        transport._setup_transport()
        for name in ("_quick_recv", "_read_buffer"):
            if not hasattr(transport, name):
                missing.append(f"amqp.transport.TCPTransport.{name}")
    except Exception as err:  # a changed constructor or setup is as fatal as a missing name
        missing.append(f"amqp.transport.TCPTransport setup ({err!r})")
    finally:
        left.close()
        right.close()
    if not isinstance(getattr(amqp.Connection, "frame_writer", None), property):
        missing.append("amqp.Connection.frame_writer (settable)")
    if not _writer_encodes_properties_through_the_message():
        missing.append("amqp.Message._serialize_properties (called by the frame writer)")
    return missing


def _writer_encodes_properties_through_the_message() -> bool:
    """True if py-amqp's frame writer takes a message's properties from the message's method."""
    marker = b"\x00\x00kitty-properties-marker"

    class Marked(amqp.Message):  # type: ignore[misc]
        def _serialize_properties(self) -> bytes:
            return marker

    sink = WriteBatcher()
    connection = type("FakeConnection", (), {"frame_max": 131072, "bytes_sent": 0})()
    try:
        frame_writer(connection, sink)(1, 1, BASIC_PUBLISH, b"", Marked(b"body"))
    except Exception:  # a changed writer signature is as fatal as an ignored method
        return False
    return any(marker in frame for frame in sink.pending or ())
