"""Confirmed, mandatory publishing on one channel: one wait per batch; nack or return raises."""

from __future__ import annotations

import contextlib
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import amqp
from kombu import Connection

from kitty_tasks.errors import PublishRejected, PublishTimeout, Unroutable

__all__ = ["ConfirmedPublisher", "OutgoingMessage", "PublishResult"]

#: Seconds to wait for the broker's confirms when the caller gives no bound.
DEFAULT_CONFIRM_TIMEOUT = 10.0


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


class ConfirmedPublisher:
    """Publishes on a dedicated confirm-mode channel of ``connection``; not thread-safe."""

    def __init__(self, connection: Connection, *, confirm_timeout: float = DEFAULT_CONFIRM_TIMEOUT):
        self.connection = connection
        self.confirm_timeout = confirm_timeout
        self._channel: amqp.Channel | None = None
        self._next_tag = 1
        self._pending: dict[int, str] = {}
        self._acked: set[int] = set()
        self._nacked: set[int] = set()
        self._returned: set[str] = set()

    def _open(self) -> amqp.Channel:
        if self._channel is not None and self._channel.is_open:
            return self._channel
        self.connection.ensure_connection(max_retries=1)
        channel = self.connection.connection.channel()
        channel.confirm_select()
        channel.events["basic_ack"].add(self._on_ack)
        channel.events["basic_nack"].add(self._on_nack)
        channel.events["basic_return"].add(self._on_return)
        self._channel = channel
        self._next_tag = 1
        self._pending.clear()
        return channel

    def _settle(self, tag: int, multiple: bool, into: set[int]) -> None:
        tags = [t for t in self._pending if t <= tag] if multiple else [tag]
        into.update(t for t in tags if t in self._pending)

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
    ) -> PublishResult:
        """Publish ``messages`` and wait once for all their confirms.

        Raises ``PublishRejected`` on any nack, ``Unroutable`` on any basic.return
        (unless ``allow_unroutable``), ``PublishTimeout`` when confirms do not come.
        """
        channel = self._open()
        self._acked.clear()
        self._nacked.clear()
        self._returned.clear()
        ids: dict[int, OutgoingMessage] = {}
        for message in messages:
            properties = {"delivery_mode": 2, **message.properties}
            properties.setdefault("message_id", uuid.uuid4().hex)
            outgoing = OutgoingMessage(
                message.body, message.exchange, message.routing_key, properties
            )
            channel._basic_publish(
                amqp.Message(outgoing.body, **properties),
                exchange=outgoing.exchange,
                routing_key=outgoing.routing_key,
                mandatory=True,
            )
            ids[self._next_tag] = outgoing
            self._pending[self._next_tag] = outgoing.message_id
            self._next_tag += 1
        self._wait(set(ids), timeout if timeout is not None else self.confirm_timeout)
        for tag in ids:
            self._pending.pop(tag, None)
        result = PublishResult(
            confirmed=[ids[t].message_id for t in sorted(self._acked & set(ids))],
            nacked=[ids[t].message_id for t in sorted(self._nacked & set(ids))],
            returned=sorted(self._returned),
        )
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
            raise Unroutable(
                f"no queue is bound to exchange {first.exchange!r} for key "
                f"{first.routing_key!r}; {len(result.returned)} message(s) returned",
                exchange=first.exchange,
                routing_key=first.routing_key,
            )
        return result

    def _wait(self, tags: set[int], timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not tags <= (self._acked | self._nacked):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                self._abandon()
                raise PublishTimeout(
                    f"broker confirmed {len(tags & self._acked)} of {len(tags)} message(s) "
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
        with contextlib.suppress(Exception):  # best effort on a connection we give up on
            self.connection.collect()

    def close(self) -> None:
        """Close the channel; the connection stays with its owner."""
        channel, self._channel = self._channel, None
        if channel is not None:
            # The channel may already be gone with its connection.
            with contextlib.suppress(Exception):
                channel.close()
