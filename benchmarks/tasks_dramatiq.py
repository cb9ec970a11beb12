"""Dramatiq's side of the task cases: a broker on the run's vhost and the same no-op actor."""

from __future__ import annotations

import os
from typing import Any

import dramatiq
from dramatiq.brokers.rabbitmq import RabbitmqBroker

from benchmarks.marks import mark
from kitty_tasks.core.settings import DEFAULT_RABBITMQ_URL
from kitty_tasks.core.topology import MAX_PRIORITY

__all__ = ["QUEUE", "broker", "noop"]

#: Dramatiq declares its own queue (plus .DQ and .XQ); same priority range as ours.
QUEUE = "bench_dramatiq"

broker = RabbitmqBroker(
    url=os.environ.get("RABBITMQ_URL", DEFAULT_RABBITMQ_URL),
    confirm_delivery=True,
    max_priority=MAX_PRIORITY,
)
dramatiq.set_broker(broker)


@dramatiq.actor(queue_name=QUEUE, max_retries=0)
def noop(seq: int, last: int, payload: dict[str, Any]) -> None:
    """Do nothing but mark the first and the last task of a drain."""
    if seq == 0:
        mark("first")
    elif seq == last:
        mark("last")
