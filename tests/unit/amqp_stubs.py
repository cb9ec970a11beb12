"""Broker-free stand-ins: a channel that records what is settled, a publish that records copies."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from kombu.message import Message

from kitty_tasks.core.errors import PublishError, PublishTimeout
from kitty_tasks.core.publisher import OutgoingMessage


class StubChannel:
    """Records acks and rejects, as ``(what, delivery_tag, flag)`` in one shared timeline."""

    no_ack_consumers = None

    def __init__(self, timeline: list[tuple[Any, ...]] | None = None) -> None:
        self.timeline: list[tuple[Any, ...]] = [] if timeline is None else timeline

    def basic_ack(self, delivery_tag: int, multiple: bool = False) -> None:
        self.timeline.append(("ack", delivery_tag, multiple))

    def basic_reject(self, delivery_tag: int, requeue: bool) -> None:
        self.timeline.append(("reject", delivery_tag, requeue))

    @property
    def settled(self) -> list[tuple[Any, ...]]:
        """The acks and rejects so far."""
        return [entry for entry in self.timeline if entry[0] in ("ack", "reject")]


class StubPublish:
    """A ``FailurePolicy`` publish callable: records each copy, or fails as told."""

    def __init__(
        self,
        timeline: list[tuple[Any, ...]] | None = None,
        fail_with: PublishError | None = None,
    ) -> None:
        self.timeline: list[tuple[Any, ...]] = [] if timeline is None else timeline
        self.fail_with = fail_with
        self.copies: list[OutgoingMessage] = []

    def __call__(self, messages: Sequence[OutgoingMessage]) -> None:
        if self.fail_with is not None:
            raise self.fail_with
        self.copies.extend(messages)
        self.timeline.extend(("publish", m.exchange, m.routing_key) for m in messages)

    @property
    def copy(self) -> OutgoingMessage:
        """The one copy published."""
        assert len(self.copies) == 1, self.copies
        return self.copies[0]


#: What a copy that the broker did not confirm in time looks like to the policy.
UNCONFIRMED = PublishTimeout("broker confirmed 0 of 1 message(s) within 5s")


def delivery(
    body: bytes,
    *,
    channel: StubChannel,
    headers: dict[str, Any] | None = None,
    delivery_tag: int = 1,
    content_type: str = "application/json",
    **properties: Any,
) -> Message:
    """A Kombu delivery as py-amqp's transport builds it (headers also among the properties)."""
    headers = dict(headers or {})
    all_properties = {
        "content_type": content_type,
        "content_encoding": "utf-8",
        "delivery_mode": 2,
        "application_headers": headers,
        **properties,
    }
    return Message(
        body=body,
        delivery_tag=delivery_tag,
        content_type=content_type,
        content_encoding="utf-8",
        delivery_info={"consumer_tag": "ctag", "routing_key": "x"},
        properties=all_properties,
        headers=headers,
        channel=channel,
    )
