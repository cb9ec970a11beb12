"""Subscriptions: the handler type, one ``subscribe`` call, and the topology each one needs."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from kombu.connection import Connection

from events.envelope import Event
from events.errors import ConfigurationError
from events.routing import check_pattern
from kitty_tasks.core.declarer import apply_topology
from kitty_tasks.core.errors import TopologyError
from kitty_tasks.core.topology import (
    DELAY_PREFIX,
    DLX_EXCHANGE,
    DLX_QUEUE,
    DLX_UNROUTED_EXCHANGE,
    EVENTS_EXCHANGE,
    TOPOLOGY,
    Binding,
    QueueSpec,
    Topology,
    TopologyProfile,
    dead_letter_queue_arguments,
    dlq_name,
    work_queue_arguments,
)

__all__ = [
    "EventHandler",
    "Subscription",
    "check_queue_name",
    "check_subscription",
    "declare_subscription",
    "ladder_topology",
    "subscription_topology",
]

#: What ``subscribe`` takes: called with each event; raising retries or dead-letters it.
EventHandler = Callable[[Event], Any]


@dataclass
class Subscription:
    """One ``subscribe`` call: which pattern, which handler, consumed from which queue."""

    pattern: str
    handler: EventHandler
    queue: str
    prefetch_count: int
    topology: Topology = field(repr=False)

    @property
    def dead_letter_queue(self) -> str:
        """Where this subscription's failed events end up."""
        return dlq_name(self.queue)


def check_subscription(pattern: str, handler: object) -> None:
    """Raise ``ConfigurationError`` unless ``pattern`` and ``handler`` can be subscribed."""
    try:
        check_pattern(pattern)
    except ValueError as err:
        raise ConfigurationError(str(err)) from err
    if not callable(handler):
        raise ConfigurationError(f"handler must be callable, got {handler!r}")


def check_queue_name(queue: object) -> str:
    """``queue`` if it can name a queue, else ``ConfigurationError``."""
    if not isinstance(queue, str) or not queue or len(queue.encode()) > 255:
        raise ConfigurationError(f"queue must be a non-empty name under 256 bytes: {queue!r}")
    return queue


def ladder_topology() -> Topology:
    """The exchanges and queues retries and dead letters need: dlx and the delay buckets."""
    delay = tuple(e for e in TOPOLOGY.exchanges if e.name.startswith(DELAY_PREFIX))
    exchanges = (
        TOPOLOGY.exchange(EVENTS_EXCHANGE),
        TOPOLOGY.exchange(DLX_UNROUTED_EXCHANGE),
        TOPOLOGY.exchange(DLX_EXCHANGE),
        *delay,
    )
    delay_names = {e.name for e in delay}
    queues = (
        TOPOLOGY.queue(DLX_QUEUE),
        *(q for q in TOPOLOGY.queues if q.name in delay_names),
    )
    return Topology(exchanges, queues)


def subscription_topology(queue: str, pattern: str | None, *, durable: bool = True) -> Topology:
    """The queue (with its DLX wiring and DLQ) and the binding a subscription needs."""
    extra = () if pattern is None else (Binding(EVENTS_EXCHANGE, pattern),)
    try:
        known = TOPOLOGY.queue(queue)
    except KeyError:
        # Durable: the profile's queue type; a transient queue can only be classic.
        profile = TOPOLOGY.profile if durable else TopologyProfile.CLASSIC
        spec = QueueSpec(queue, work_queue_arguments(queue, profile), extra, durable)
    else:
        if known.is_stream:
            # A stream cannot reject, so neither retries nor dead letters could work on it,
            # and acking would not remove anything: it is read by offset instead.
            raise ConfigurationError(
                f"{queue!r} is a stream (the audit log), not a subscriber queue: read it "
                "with events.replay.replay_events or `kitty-tasks events replay`, or "
                "subscribe without queue= to get a queue of your own"
            )
        # A queue of the guide keeps its own arguments (declaring others would be refused).
        added = tuple(b for b in extra if b not in known.bindings)
        spec = QueueSpec(
            known.name, known.arguments, (*known.bindings, *added), known.durable and durable
        )
    dead_letters = QueueSpec(
        dlq_name(queue),
        dead_letter_queue_arguments(TOPOLOGY.profile),
        (Binding(DLX_EXCHANGE, queue),),
    )
    return Topology((), (spec, dead_letters))


def declare_subscription(connection: Connection, topology: Topology, *, with_ladder: bool) -> None:
    """Declare a subscription's ``topology`` (after the ladder's, ``with_ladder``)."""
    try:
        if with_ladder:
            apply_topology(connection, ladder_topology())
        apply_topology(connection, topology)
    except (TopologyError, *connection.channel_errors) as err:
        names = ", ".join(q.name for q in topology.queues)
        raise ConfigurationError(
            f"cannot declare {names}: {err} (a queue of that name exists with other arguments?)"
        ) from err
    except connection.connection_errors as err:
        # RabbitMQ 4.3 (and 4.0 configured so) closes the connection with 541 for these.
        if "transient_nonexcl_queues" not in str(err):
            raise
        names = ", ".join(q.name for q in topology.queues if not q.durable)
        raise ConfigurationError(
            f"the broker refuses transient (non-durable, non-exclusive) queues, as RabbitMQ "
            f"4.3 does by default: declare {names} durable"
        ) from err
