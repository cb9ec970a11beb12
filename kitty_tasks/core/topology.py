"""Every exchange, queue, binding and argument of the platform, as data."""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from kitty_tasks.core.settings import TopologyProfile, topology_profile

__all__ = [
    "AUDIT_EVENTS",
    "BROKER_DEATH_HEADERS",
    "DEFAULT_RETRY_BUCKETS",
    "DLQ_SUFFIX",
    "DLX_EXCHANGE",
    "DLX_QUEUE",
    "DLX_UNROUTED_EXCHANGE",
    "EVENTS_EXCHANGE",
    "RPC_EXCHANGE",
    "STREAM",
    "TASKS_EXCHANGE",
    "TASK_QUEUES",
    "Binding",
    "ExchangeSpec",
    "QueueSpec",
    "QueueType",
    "Topology",
    "TopologyProfile",
    "build_topology",
    "dead_letter_arguments",
    "dead_letter_queue_arguments",
    "delay_exchange_name",
    "dlq_name",
    "pick_bucket",
    "subscriber_queue_name",
    "to_definitions",
]

EVENTS_EXCHANGE = "kitty.events"
TASKS_EXCHANGE = "kitty.tasks"
RPC_EXCHANGE = "kitty.rpc"
DLX_EXCHANGE = "dlx"
DLX_UNROUTED_EXCHANGE = "dlx.unrouted"
DLX_QUEUE = "dlx.queue"
DELAY_PREFIX = "kitty.delay."
DLQ_SUFFIX = ".dlq"

#: Queue names of the KITT guide; nobody types them twice.
RESEARCH_TASKS = "research.tasks"
CAD_TASKS = "cad.tasks"
BRAIN_COMMANDS = "brain.commands"
FABRICATION_EVENTS = "fabrication.events"
NOTIFICATIONS = "notifications"
AUDIT_EVENTS = "audit.events"
TASK_QUEUES = (RESEARCH_TASKS, CAD_TASKS, BRAIN_COMMANDS)
EVENT_QUEUES = (FABRICATION_EVENTS, NOTIFICATIONS)
#: Streams: append-only logs read from an offset; they never dead-letter, so have no DLQ.
STREAMS = (AUDIT_EVENTS,)
STREAM = "stream"

#: The audit log keeps 30 days of events, capped in bytes: streams retain by age and size,
#: never by message count. 1 GiB holds the guide's 1M events at 1 KiB each (measured: an
#: event of the guide is about 0.5 KiB on disk); retention drops whole 64 MiB segments.
AUDIT_MAX_AGE = "30D"
AUDIT_MAX_BYTES = 1024**3
AUDIT_SEGMENT_BYTES = 64 * 1024**2

#: Highest task priority; RabbitMQ delivers higher numbers first.
MAX_PRIORITY = 10
#: RabbitMQ 4.0's quorum queues have two priority levels: above this is high, the rest normal.
QUORUM_NORMAL_PRIORITY_MAX = 4
#: Deliveries of one message (requeues, lost workers) before a quorum queue dead-letters it;
#: explicit, as 4.0's default (20) would let a poison task kill twenty workers.
DELIVERY_LIMIT = 5
#: The oldest broker each profile runs on (quorum: priorities and the 4.0 delivery limit).
MIN_BROKER_VERSION = {TopologyProfile.CLASSIC: (3, 10), TopologyProfile.QUORUM: (4, 0)}

#: Retry-ladder buckets in seconds: a retry waits in the first bucket >= its delay.
DEFAULT_RETRY_BUCKETS: tuple[int, ...] = (1, 5, 30, 120, 300, 1800, 7200)

#: A subscriber queue made by ``EventBus.subscribe``: one per (source, pattern).
SUBSCRIBER_QUEUE_TEMPLATE = "{source}.{pattern}.events"

#: Headers the platform writes on retried and dead-lettered messages.
H_ATTEMPT = "x-kitty-attempt"
H_MAX_RETRIES = "x-kitty-max-retries"
H_ERROR_TYPE = "x-kitty-error-type"
H_ERROR_MESSAGE = "x-kitty-error-message"
H_TRACEBACK = "x-kitty-traceback"
H_ATTEMPTS = "x-kitty-attempts"
H_FIRST_FAILURE = "x-kitty-first-failure"
H_LAST_FAILURE = "x-kitty-last-failure"
H_ORIGINAL_QUEUE = "x-kitty-original-queue"
#: Unix time at which a task was (last) published; the queue-wait metric reads it.
H_PUBLISHED_AT = "x-kitty-published-at"
#: How many times an operator has replayed this message out of a DLQ.
H_REPLAYS = "x-kitty-replays"
#: On an event republished from a stream (the audit log): the stream it was read from.
H_REPLAYED_FROM = "x-kitty-replayed-from"
#: On the empty message a stream replay appends to find the log's end: the replay's id.
H_STREAM_MARKER = "x-kitty-stream-marker"
#: W3C trace context (docs/tracing.md): written only while tracing is on.
H_TRACEPARENT = "traceparent"
H_TRACESTATE = "tracestate"
FAILURE_HEADERS = (
    H_ERROR_TYPE,
    H_ERROR_MESSAGE,
    H_TRACEBACK,
    H_ATTEMPTS,
    H_FIRST_FAILURE,
    H_LAST_FAILURE,
    H_ORIGINAL_QUEUE,
)
#: Headers the broker writes when it dead-letters a message itself.
BROKER_DEATH_HEADERS = frozenset(
    {
        "x-death",
        "x-first-death-exchange",
        "x-first-death-queue",
        "x-first-death-reason",
        "x-last-death-exchange",
        "x-last-death-queue",
        "x-last-death-reason",
    }
)


class QueueType(str, Enum):
    """RabbitMQ queue implementation."""

    CLASSIC = "classic"
    QUORUM = "quorum"


@dataclass(frozen=True)
class ExchangeSpec:
    """An exchange to declare."""

    name: str
    type: str
    arguments: dict[str, Any] = field(default_factory=dict, hash=False)
    durable: bool = True


@dataclass(frozen=True)
class Binding:
    """A binding from an exchange to a queue."""

    exchange: str
    routing_key: str


@dataclass(frozen=True)
class QueueSpec:
    """A queue to declare, with its arguments and bindings."""

    name: str
    arguments: dict[str, Any] = field(default_factory=dict, hash=False)
    bindings: tuple[Binding, ...] = ()
    durable: bool = True

    @property
    def is_stream(self) -> bool:
        """True for a stream, which cannot reject or dead-letter and so has no DLQ."""
        return self.arguments.get("x-queue-type") == STREAM


@dataclass(frozen=True)
class Topology:
    """The whole broker layout: exchanges first, then queues."""

    exchanges: tuple[ExchangeSpec, ...]
    queues: tuple[QueueSpec, ...]
    profile: TopologyProfile = TopologyProfile.CLASSIC

    def queue(self, name: str) -> QueueSpec:
        """Return the queue called ``name``, or raise ``KeyError``."""
        for spec in self.queues:
            if spec.name == name:
                return spec
        raise KeyError(f"no queue {name!r} in the topology")

    def exchange(self, name: str) -> ExchangeSpec:
        """Return the exchange called ``name``, or raise ``KeyError``."""
        for spec in self.exchanges:
            if spec.name == name:
                return spec
        raise KeyError(f"no exchange {name!r} in the topology")

    def bindings(self) -> Iterator[tuple[str, Binding]]:
        """Yield (queue name, binding) for every binding."""
        for spec in self.queues:
            for binding in spec.bindings:
                yield spec.name, binding


def dlq_name(queue: str) -> str:
    """Name of the queue that collects ``queue``'s dead letters."""
    return f"{queue}{DLQ_SUFFIX}"


def dead_letter_arguments(queue: str) -> dict[str, Any]:
    """Arguments that send ``queue``'s dead letters to ``dlx`` and so into its DLQ."""
    return {"x-dead-letter-exchange": DLX_EXCHANGE, "x-dead-letter-routing-key": queue}


def quorum_arguments(*, dead_letters: bool) -> dict[str, Any]:
    """Arguments of a quorum queue; one that dead-letters does so at least once.

    RabbitMQ only dead-letters at least once with ``reject-publish`` overflow: with
    ``drop-head`` it silently falls back to at most once.
    """
    arguments: dict[str, Any] = {"x-queue-type": QueueType.QUORUM.value}
    if dead_letters:
        arguments |= {
            "x-delivery-limit": DELIVERY_LIMIT,
            "x-dead-letter-strategy": "at-least-once",
            "x-overflow": "reject-publish",
        }
    return arguments


def work_queue_arguments(
    queue: str, profile: TopologyProfile = TopologyProfile.CLASSIC
) -> dict[str, Any]:
    """Arguments of a queue that dead-letters into ``<queue>.dlq``, in ``profile``."""
    arguments = dead_letter_arguments(queue)
    if profile is TopologyProfile.QUORUM:
        arguments |= quorum_arguments(dead_letters=True)
    return arguments


def dead_letter_queue_arguments(
    profile: TopologyProfile = TopologyProfile.CLASSIC,
) -> dict[str, Any]:
    """Arguments of a DLQ (which dead-letters nowhere), in ``profile``."""
    if profile is TopologyProfile.QUORUM:
        return quorum_arguments(dead_letters=False)
    return {}


def bucket_label(seconds: int) -> str:
    """Human name of a bucket: 1s, 30s, 2m, 2h."""
    if seconds % 3600 == 0:
        return f"{seconds // 3600}h"
    if seconds % 60 == 0:
        return f"{seconds // 60}m"
    return f"{seconds}s"


def delay_exchange_name(seconds: int) -> str:
    """Exchange (and queue) name of the retry bucket that holds messages ``seconds``."""
    return f"{DELAY_PREFIX}{bucket_label(seconds)}"


def pick_bucket(delay: float, buckets: Iterable[int] = DEFAULT_RETRY_BUCKETS) -> int:
    """Smallest bucket that waits at least ``delay`` seconds (the largest if none does)."""
    ordered = sorted(buckets)
    if not ordered:
        raise ValueError("the retry ladder needs at least one bucket")
    for seconds in ordered:
        if seconds >= delay:
            return seconds
    return ordered[-1]


def subscriber_queue_name(source: str, pattern: str) -> str:
    """Queue name of an event subscription; ``#`` and ``*`` become words."""
    readable = pattern.replace("#", "all").replace("*", "any")
    return SUBSCRIBER_QUEUE_TEMPLATE.format(source=source, pattern=readable)


def _task_queue(name: str, max_length: int | None, profile: TopologyProfile) -> QueueSpec:
    arguments = work_queue_arguments(name, profile)
    if profile is TopologyProfile.CLASSIC:
        # Quorum queues take no x-max-priority: 4.0 gives them two levels unasked.
        arguments["x-max-priority"] = MAX_PRIORITY
    if max_length is not None:
        arguments |= {"x-max-length": max_length, "x-overflow": "reject-publish"}
    return QueueSpec(name, arguments, (Binding(TASKS_EXCHANGE, name),))


def _event_queue(
    name: str, pattern: str, extra: dict[str, Any], queue_type: QueueType, profile: TopologyProfile
) -> QueueSpec:
    arguments = {**extra, **work_queue_arguments(name, profile)}
    if queue_type is QueueType.QUORUM:
        arguments["x-queue-type"] = QueueType.QUORUM.value
    return QueueSpec(name, arguments, (Binding(EVENTS_EXCHANGE, pattern),))


def _audit_stream() -> QueueSpec:
    arguments = {
        "x-queue-type": STREAM,
        "x-max-age": AUDIT_MAX_AGE,
        "x-max-length-bytes": AUDIT_MAX_BYTES,
        "x-stream-max-segment-size-bytes": AUDIT_SEGMENT_BYTES,
    }
    return QueueSpec(AUDIT_EVENTS, arguments, (Binding(EVENTS_EXCHANGE, "#"),))


def build_topology(
    *,
    buckets: Iterable[int] = DEFAULT_RETRY_BUCKETS,
    event_queue_type: QueueType = QueueType.CLASSIC,
    profile: TopologyProfile = TopologyProfile.CLASSIC,
) -> Topology:
    """Build the platform's topology in ``profile``.

    ``quorum`` makes every queue a quorum queue (RabbitMQ 4.0+); ``event_queue_type``
    makes only the event queues quorum in the classic profile (3.x clusters).
    The audit log is a stream in every profile: streams replicate across a cluster too.
    """
    bucket_list = sorted(set(buckets))
    dlq_arguments = dead_letter_queue_arguments(profile)
    exchanges = [
        ExchangeSpec(EVENTS_EXCHANGE, "topic"),
        ExchangeSpec(TASKS_EXCHANGE, "direct"),
        ExchangeSpec(RPC_EXCHANGE, "direct"),
        ExchangeSpec(DLX_UNROUTED_EXCHANGE, "fanout"),
        ExchangeSpec(DLX_EXCHANGE, "topic", {"alternate-exchange": DLX_UNROUTED_EXCHANGE}),
        *(ExchangeSpec(delay_exchange_name(s), "fanout") for s in bucket_list),
    ]
    work_queues = [
        _task_queue(RESEARCH_TASKS, 10_000, profile),
        _task_queue(CAD_TASKS, 5_000, profile),
        _task_queue(BRAIN_COMMANDS, None, profile),
        _event_queue(
            FABRICATION_EVENTS,
            "fabrication.#",
            {"x-max-length": 100_000, "x-overflow": "reject-publish"},
            event_queue_type,
            profile,
        ),
        _event_queue(
            NOTIFICATIONS, "notification.#", {"x-max-length": 50_000}, event_queue_type, profile
        ),
        _audit_stream(),
    ]
    dead_letter_queues = [
        QueueSpec(dlq_name(q.name), dlq_arguments, (Binding(DLX_EXCHANGE, q.name),))
        for q in work_queues
        if not q.is_stream
    ]
    delay_queues = [
        QueueSpec(
            delay_exchange_name(s),
            # Dead-lettering to the default exchange keeps the routing key, which is
            # the name of the queue the message came from: it goes straight back there.
            {"x-message-ttl": s * 1000, "x-dead-letter-exchange": "", **_delay_arguments(profile)},
            (Binding(delay_exchange_name(s), ""),),
        )
        for s in bucket_list
    ]
    queues = [
        *work_queues,
        *dead_letter_queues,
        QueueSpec(DLX_QUEUE, dlq_arguments, (Binding(DLX_UNROUTED_EXCHANGE, ""),)),
        *delay_queues,
    ]
    return Topology(tuple(exchanges), tuple(queues), profile)


def _delay_arguments(profile: TopologyProfile) -> dict[str, Any]:
    if profile is TopologyProfile.CLASSIC:
        return {}
    # A retry leaves its bucket by dead-lettering: at least once, or it could be lost there.
    arguments = quorum_arguments(dead_letters=True)
    # Nothing consumes a bucket, so nothing is ever redelivered from it.
    del arguments["x-delivery-limit"]
    return arguments


#: The topology every part of the platform uses: KITTY_TOPOLOGY_PROFILE's.
TOPOLOGY = build_topology(profile=topology_profile())


def to_definitions(topology: Topology = TOPOLOGY, vhost: str = "/") -> dict[str, Any]:
    """RabbitMQ definitions (the management import format) for ``topology``; no users."""
    return {
        "vhosts": [{"name": vhost}],
        "exchanges": [
            {
                "name": ex.name,
                "vhost": vhost,
                "type": ex.type,
                "durable": ex.durable,
                "auto_delete": False,
                "internal": False,
                "arguments": ex.arguments,
            }
            for ex in topology.exchanges
        ],
        "queues": [
            {
                "name": q.name,
                "vhost": vhost,
                "durable": q.durable,
                "auto_delete": False,
                "arguments": q.arguments,
            }
            for q in topology.queues
        ],
        "bindings": [
            {
                "source": binding.exchange,
                "vhost": vhost,
                "destination": queue,
                "destination_type": "queue",
                "routing_key": binding.routing_key,
                "arguments": {},
            }
            for queue, binding in topology.bindings()
        ],
    }


def definitions_json(topology: Topology = TOPOLOGY) -> str:
    """The definitions file's exact text, stable so that drift shows in a diff."""
    return json.dumps(to_definitions(topology), indent=2, sort_keys=True) + "\n"
