"""The py-amqp private names kitty_tasks.core.amqp_internals relies on are still there."""

from __future__ import annotations

import re
import socket
import subprocess
from pathlib import Path

import amqp
from amqp.transport import TCPTransport

from kitty_tasks.core.amqp_internals import (
    BASIC_PUBLISH,
    EncodedMessage,
    WriteBatcher,
    buffer_reads,
    has_buffered_frame,
    missing_internals,
    publish_arguments,
    write_frames_into,
)

ROOT = Path(__file__).resolve().parents[2]
PRIVATE = re.compile(
    r"_quick_recv|_read_buffer|frame_writer|method_framing|_serialize_properties|celery\._state"
)


def test_this_py_amqp_has_every_private_the_platform_uses() -> None:
    assert missing_internals() == []


def test_private_names_appear_in_one_module_only() -> None:
    files = subprocess.run(
        ["git", "ls-files", "*.py"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.split()
    users = {
        name
        for name in files
        if not name.startswith("tests/") and PRIVATE.search((ROOT / name).read_text())
    }
    assert users == {"kitty_tasks/core/amqp_internals.py"}


def test_chunked_reads_leave_the_surplus_buffered() -> None:
    # Given a transport over a socket pair whose peer sent two frames' worth of bytes
    left, right = socket.socketpair()
    try:
        transport = TCPTransport("127.0.0.1:1")
        transport.sock = left
        transport._setup_transport()
        assert buffer_reads(transport, 4096)
        right.sendall(b"a" * 10 + b"b" * 10)
        # When py-amqp reads the first ten bytes
        assert transport._read(10) == b"a" * 10
        # Then the rest waits in its buffer, where a waiting reader is told to look
        assert has_buffered_frame(transport)
        assert transport._read(10) == b"b" * 10
        assert not has_buffered_frame(transport)
    finally:
        left.close()
        right.close()


def test_a_collecting_batcher_keeps_copies_and_a_writing_one_writes_through() -> None:
    written: list[bytes] = []
    through = WriteBatcher(written.append)
    through.write(b"x")
    collecting = WriteBatcher()
    buffer = bytearray(b"frame")
    collecting.write(buffer)
    buffer[:] = b"other"  # the frame writer reuses its buffer
    assert written == [b"x"]
    assert collecting.pending == [b"frame"]


def test_an_encoded_message_is_framed_exactly_as_py_amqps_message() -> None:
    # Given one task message's properties (Celery's protocol-2 headers among them)
    properties = {
        "content_type": "application/json",
        "content_encoding": "utf-8",
        "application_headers": {"lang": "py", "task": "t", "id": "i-1", "eta": None},
        "delivery_mode": 2,
        "priority": 0,
        "correlation_id": "i-1",
        "reply_to": "r",
        "message_id": "i-1",
    }
    connection = type("FakeConnection", (), {"frame_max": 131072, "bytes_sent": 0})()
    frames = []
    for message in (amqp.Message, EncodedMessage, EncodedMessage):
        # When py-amqp's frame writer frames it as py-amqp's message and as the platform's
        sink = WriteBatcher()
        write_frames_into(connection, sink)(
            1, 1, BASIC_PUBLISH, publish_arguments("x", "k", mandatory=True),
            message(b"[[], {}, {}]", **properties),
        )  # fmt: skip
        frames.append(b"".join(sink.pending or ()))
    # Then the bytes are the same, also when the repeated headers come from the encoder's cache
    assert frames[0] == frames[1] == frames[2]
