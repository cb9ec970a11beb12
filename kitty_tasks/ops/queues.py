"""Operator's view of queues over AMQP: connect with clear errors, exact depths, queue kinds."""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass

import amqp
from kombu import Connection

from kitty_tasks.core.errors import KittyError
from kitty_tasks.core.management import ManagementClient, ManagementError
from kitty_tasks.core.topology import (
    DELAY_PREFIX,
    DLQ_SUFFIX,
    DLX_QUEUE,
    EVENT_QUEUES,
    RPC_EXCHANGE,
    STREAMS,
    SUBSCRIBER_QUEUE_TEMPLATE,
    TASK_QUEUES,
    TOPOLOGY,
    dlq_name,
)

__all__ = [
    "QueueNotFound",
    "QueueStats",
    "is_dead_letter_queue",
    "is_reported",
    "queue_kind",
    "queue_stats",
    "resolve_dlq",
    "rpc_service_queues",
]

#: How every subscriber queue's name ends (``{source}.{pattern}.events``).
SUBSCRIBER_SUFFIX = SUBSCRIBER_QUEUE_TEMPLATE.rpartition("}")[2]
#: The queues the topology declares.
TOPOLOGY_QUEUES = frozenset(q.name for q in TOPOLOGY.queues)


class QueueNotFound(KittyError):
    """The named queue does not exist in the vhost."""


@dataclass(frozen=True)
class QueueStats:
    """Exact ready-message and consumer counts of one queue (from a passive declare)."""

    name: str
    messages: int
    consumers: int


def queue_stats(connection: Connection, name: str) -> QueueStats:
    """Exact depth and consumers of ``name``; ``QueueNotFound`` when it does not exist."""
    channel = connection.connection.channel()
    try:
        _, messages, consumers = channel.queue_declare(name, passive=True)
    except amqp.exceptions.NotFound as err:
        raise QueueNotFound(f"no queue {name!r} in this vhost") from err
    finally:
        # A 404 has already closed the channel on the broker's side.
        if channel.is_open:
            channel.close()
    return QueueStats(name, int(messages), int(consumers))


def is_dead_letter_queue(name: str) -> bool:
    """True for ``<queue>.dlq`` and the catch-all ``dlx.queue``."""
    return name.endswith(DLQ_SUFFIX) or name == DLX_QUEUE


def resolve_dlq(connection: Connection, name: str) -> str:
    """The dead-letter queue ``name`` means: itself, or ``<name>.dlq`` for a work queue."""
    if not is_dead_letter_queue(name):
        candidate = dlq_name(name)
        try:
            queue_stats(connection, candidate)
        except QueueNotFound as err:
            raise QueueNotFound(
                f"{name!r} is not a dead-letter queue (names end in {DLQ_SUFFIX!r} or are "
                f"{DLX_QUEUE!r}) and {candidate!r} does not exist"
            ) from err
        return candidate
    queue_stats(connection, name)
    return name


def queue_kind(name: str, rpc_queues: Collection[str] = ()) -> str:
    """The kind of a queue: task, stream, event, dlq, delay, rpc (in ``rpc_queues``), other."""
    if name in TASK_QUEUES:
        return "task"
    if name in STREAMS:
        return "stream"
    if is_dead_letter_queue(name):
        return "dlq"
    if name.startswith(DELAY_PREFIX):
        return "delay"
    if name in EVENT_QUEUES or name.endswith(SUBSCRIBER_SUFFIX):
        return "event"
    if name in rpc_queues:
        return "rpc"
    return "other"


def is_reported(name: str, rpc_queues: Collection[str] = ()) -> bool:
    """True for the queues health and the exporter report: the topology's, DLQs, subscribers', RPC.

    Reply and result queues (named by uuids) and other strays are left out, so the
    exporter's ``queue`` label takes a bounded set of values.
    """
    return name in TOPOLOGY_QUEUES or queue_kind(name, rpc_queues) != "other"


def rpc_service_queues(management: ManagementClient, vhost: str) -> set[str]:
    """The RPC servers' request queues of ``vhost``: those bound to ``kitty.rpc``."""
    path = f"exchanges/{management.quote(vhost)}/{management.quote(RPC_EXCHANGE)}/bindings/source"
    try:
        bindings = management.get(path) or []
    except ManagementError:
        return set()  # no kitty.rpc in this vhost (404): no RPC queues either
    return {str(b["destination"]) for b in bindings if b.get("destination_type") == "queue"}
