"""Batched acks: handled deliveries of one channel acked with one ``basic.ack(multiple=True)``."""

from __future__ import annotations

import time
from typing import Any

__all__ = ["ACK_BATCH", "ACK_DELAY", "ACK_SLOW_HANDLER", "AckBatch", "batch_size"]

#: Handled events acked together with one ``basic.ack(multiple=True)`` (at most half the
#: prefetch); the batch also goes out when the queue has nothing more to deliver right now.
ACK_BATCH = 25
#: Seconds a handled event waits at most for its batch's ack.
ACK_DELAY = 0.2
#: The gap between handled events from which each is acked on its own (batching pays only
#: for fast handlers).
ACK_SLOW_HANDLER = 0.005


def batch_size(prefetch_count: int) -> int:
    """Acks per batch for a consumer with ``prefetch_count``: at most half of it."""
    return max(1, min(ACK_BATCH, prefetch_count // 2))


class AckBatch:
    """Handled deliveries of one channel, acked with one ``basic.ack(multiple=True)``.

    Deliveries are handled one at a time in delivery order, so acking the last handled tag
    with ``multiple`` acks exactly the handled ones before it (a rejected one is settled
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
        """Count ``delivery_tag`` as handled; ack the batch when full, old, or handlers slow."""
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
        """True when the oldest unacked handled delivery has waited ``ACK_DELAY``."""
        return self.last_tag is not None and time.monotonic() - self.since >= ACK_DELAY

    def flush(self) -> None:
        """Ack every handled delivery not acked yet, with one ``basic.ack(multiple=True)``."""
        tag, self.last_tag = self.last_tag, None
        self.count = 0
        if tag is not None:
            self.channel.basic_ack(tag, multiple=True)
