"""Confirmed, mandatory publishing on one channel: one wait per batch; nack or return raises."""

from __future__ import annotations

import contextlib
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import amqp
from kombu import Connection

from kitty_tasks.core.amqp_internals import (
    BASIC_PUBLISH,
    EncodedMessage,
    WriteBatcher,
    publish_arguments,
    write_frames_into,
)
from kitty_tasks.core.errors import PublishRejected, PublishTimeout, Unroutable
from kitty_tasks.core.settings import get_settings

__all__ = ["ConfirmedPublisher", "OutgoingMessage", "PublishResult", "unroutable"]

#: Bytes of a batch's frames collected before they go to the socket in one write.
WRITE_CHUNK = 64 * 1024


@dataclass(frozen=True)
class OutgoingMessage:
    """One message to publish: body bytes, where it goes, and its AMQP properties."""

    body: bytes
    exchange: str
    routing_key: str
    properties: dict[str, Any] = field(default_factory=dict)

    @property
    def message_id(self) -> str:
        """The message id, used to match a basic.return to its message."""
        return str(self.properties.get("message_id", ""))


@dataclass
class PublishResult:
    """What the broker said about a batch: confirmed, nacked and returned message ids."""

    confirmed: list[str] = field(default_factory=list)
    nacked: list[str] = field(default_factory=list)
    returned: list[str] = field(default_factory=list)
    #: With ``report_timeout``: ids whose confirm had not come when the wait timed out.
    unconfirmed: list[str] = field(default_factory=list)


class ConfirmedPublisher:
    """Publishes on a dedicated confirm-mode channel of ``connection``; not thread-safe.

    ``confirm_timeout`` bounds the wait for confirms; by default ``KITTY_PUBLISH_TIMEOUT``.
    """

    def __init__(self, connection: Connection, *, confirm_timeout: float | None = None):
        self.connection = connection
        self.confirm_timeout = (
            get_settings().publish_timeout if confirm_timeout is None else confirm_timeout
        )
        self._channel: amqp.Channel | None = None
        self._next_tag = 1
        #: Delivery tags of the batch in flight whose confirm has not come yet.
        self._pending: dict[int, str] = {}
        self._acked: set[int] = set()
        self._nacked: set[int] = set()
        self._returned: set[str] = set()
        #: Collects a batch's frames for one socket write.
        self._frames = WriteBatcher()
        self._write_frame: Callable[..., Any] | None = None
        self._publish_args: dict[tuple[str, str], bytes] = {}

    def _open(self) -> amqp.Channel:
        if self._channel is not None and self._channel.is_open:
            return self._channel
        self.connection.ensure_connection(max_retries=1)
        raw = self.connection.connection
        channel = raw.channel()
        channel.confirm_select()
        channel.events["basic_ack"].add(self._on_ack)
        channel.events["basic_nack"].add(self._on_nack)
        channel.events["basic_return"].add(self._on_return)
        self._channel = channel
        self._next_tag = 1
        self._pending.clear()
        # A batch's frames then leave in one write instead of one sendall (and one socket
        # poll) per message.
        self._write_frame = write_frames_into(raw, self._frames)
        return channel

    def _settle(self, tag: int, multiple: bool, into: set[int]) -> None:
        tags = [t for t in self._pending if t <= tag] if multiple else [tag]
        for settled in tags:
            if self._pending.pop(settled, None) is not None:
                into.add(settled)

    def _on_ack(self, delivery_tag: int, multiple: bool) -> None:
        self._settle(delivery_tag, multiple, self._acked)

    def _on_nack(self, delivery_tag: int, multiple: bool) -> None:
        self._settle(delivery_tag, multiple, self._nacked)

    def _on_return(self, exc: Exception, exchange: str, routing_key: str, message: Any) -> None:
        self._returned.add(str(message.properties.get("message_id", "")))

    def publish(self, message: OutgoingMessage, *, allow_unroutable: bool = False) -> None:
        """Publish one message and wait for its confirm."""
        self.publish_batch([message], allow_unroutable=allow_unroutable)

    def publish_batch(
        self,
        messages: Sequence[OutgoingMessage],
        *,
        allow_unroutable: bool = False,
        timeout: float | None = None,
        check: bool = True,
        report_timeout: bool = False,
    ) -> PublishResult:
        """Publish ``messages`` and wait once for all their confirms.

        Raises ``PublishRejected`` on any nack, ``Unroutable`` on any basic.return
        (unless ``allow_unroutable``), ``PublishTimeout`` when confirms do not come.
        With ``check=False`` nacks and returns are only reported in the result, for a
        caller that answers each message on its own. With ``report_timeout`` (and
        ``check=False``) a timeout is reported in ``unconfirmed`` instead of raised.
        """
        channel = self._open()
        self._acked.clear()
        self._nacked.clear()
        self._returned.clear()
        ids: dict[int, OutgoingMessage] = {}
        try:
            self._write(channel, messages, ids)
        finally:
            self._frames.pending = []
        unconfirmed: list[str] = []
        try:
            self._wait(set(ids), timeout if timeout is not None else self.confirm_timeout)
        except PublishTimeout:
            if check or not report_timeout:
                raise
            settled = self._acked | self._nacked
            unconfirmed = [m.message_id for t, m in sorted(ids.items()) if t not in settled]
        result = PublishResult(
            confirmed=[ids[t].message_id for t in sorted(self._acked & ids.keys())],
            nacked=[ids[t].message_id for t in sorted(self._nacked & ids.keys())],
            returned=sorted(self._returned),
            unconfirmed=unconfirmed,
        )
        if not check:
            return result
        if result.nacked:
            first = next(m for m in ids.values() if m.message_id in result.nacked)
            raise PublishRejected(
                f"broker refused {len(result.nacked)} of {len(ids)} message(s) for "
                f"exchange {first.exchange!r} key {first.routing_key!r}: the queue is full "
                "(x-overflow reject-publish) or unavailable",
                queue=first.routing_key,
            )
        if result.returned and not allow_unroutable:
            first = next(m for m in ids.values() if m.message_id in result.returned)
            raise unroutable(first, len(result.returned))
        return result

    def _write(
        self,
        channel: amqp.Channel,
        messages: Sequence[OutgoingMessage],
        ids: dict[int, OutgoingMessage],
    ) -> None:
        """Frame every message (mandatory basic.publish) and send them in as few writes as can.

        Not ``channel.basic_publish``: besides a ``sendall`` per message, py-amqp polls the
        socket before each one (two ``settimeout`` calls and a ``recv``) for a
        connection.blocked notice; ``_wait`` reads whatever the broker sent anyway, and a
        blocked connection ends in ``PublishTimeout``. Writes of up to ``WRITE_CHUNK`` let
        the broker start on a large batch while the rest is framed.
        """
        write_frame, frames = self._write_frame, self._frames.pending
        assert write_frame is not None  # set by _open
        assert frames is not None  # a collecting batcher
        send = self.connection.connection.transport.write
        channel_id = channel.channel_id
        size = 0
        for message in messages:
            outgoing, properties = message, message.properties
            if properties.get("delivery_mode") is None or not properties.get("message_id"):
                properties = {"delivery_mode": 2, **properties}
                properties.setdefault("message_id", uuid.uuid4().hex)
                outgoing = OutgoingMessage(
                    message.body, message.exchange, message.routing_key, properties
                )
            key = (outgoing.exchange, outgoing.routing_key)
            args = self._publish_args.get(key)
            if args is None:
                args = publish_arguments(outgoing.exchange, outgoing.routing_key, mandatory=True)
                if len(self._publish_args) < 1024:
                    self._publish_args[key] = args
            # Properties encoded as py-amqp would, repeated header values once (~20 a task).
            write_frame(
                1, channel_id, BASIC_PUBLISH, args, EncodedMessage(outgoing.body, **properties)
            )
            size += len(frames[-1])
            ids[self._next_tag] = outgoing
            self._pending[self._next_tag] = outgoing.message_id
            self._next_tag += 1
            if size >= WRITE_CHUNK:
                send(b"".join(frames))
                frames.clear()
                size = 0
        if frames:
            send(b"".join(frames))

    def _wait(self, tags: set[int], timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not tags.isdisjoint(self._pending):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                confirmed = len(tags) - len(tags & self._pending.keys())
                self._abandon()
                raise PublishTimeout(
                    f"broker confirmed {confirmed} of {len(tags)} message(s) "
                    f"within {timeout:g}s (is a memory or disk alarm blocking publishers?)"
                )
            try:
                self.connection.drain_events(timeout=min(remaining, 1.0))
            except TimeoutError:
                continue

    def _abandon(self) -> None:
        # A broker that blocked this connection (memory/disk alarm) reads nothing more from
        # it, so channel.close would wait for close-ok forever: drop the socket instead; the
        # connection reconnects on its next use.
        self._channel = None
        self._write_frame = None
        with contextlib.suppress(Exception):  # best effort on a connection we give up on
            self.connection.collect()

    def close(self) -> None:
        """Close the channel; the connection stays with its owner."""
        channel, self._channel = self._channel, None
        self._write_frame = None
        if channel is not None:
            # The channel may already be gone with its connection.
            with contextlib.suppress(Exception):
                channel.close()


def unroutable(message: OutgoingMessage, returned: int) -> Unroutable:
    """The error for ``returned`` messages, the first of them ``message``, that no queue took."""
    return Unroutable(
        f"no queue is bound to exchange {message.exchange!r} for key "
        f"{message.routing_key!r}; {returned} message(s) returned",
        exchange=message.exchange,
        routing_key=message.routing_key,
    )
