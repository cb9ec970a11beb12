"""Prometheus metrics of the platform (prefix ``kitty_``); every part records into these."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

__all__ = [
    "DLQ_DEPTH",
    "DLQ_OLDEST_AGE",
    "EVENTS_CONSUMED",
    "EVENTS_FAILED",
    "EVENTS_PUBLISHED",
    "QUEUE_CONSUMERS",
    "QUEUE_DEPTH",
    "RPC_LATENCY",
    "TASKS",
    "TASK_QUEUE_WAIT",
    "TASK_RUNTIME",
]

_LATENCY_BUCKETS = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1,
    2.5,
    5,
    10,
    30,
)
_TASK_BUCKETS = (0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 10, 30, 60, 300, 900, 3600)

#: outcome: succeeded, failed, retried, dead_lettered
TASKS = Counter(
    "kitty_tasks", "Tasks finished, by task, queue and outcome", ["task", "queue", "outcome"]
)
TASK_RUNTIME = Histogram(
    "kitty_task_runtime_seconds", "Task run time", ["task", "queue"], buckets=_TASK_BUCKETS
)
TASK_QUEUE_WAIT = Histogram(
    "kitty_task_queue_wait_seconds",
    "Time from publish to the start of the run",
    ["task", "queue"],
    buckets=_TASK_BUCKETS,
)
EVENTS_PUBLISHED = Counter(
    "kitty_events_published", "Events confirmed by the broker", ["event_type", "source"]
)
EVENTS_CONSUMED = Counter(
    "kitty_events_consumed", "Events handled successfully", ["event_type", "queue"]
)
#: outcome: retried, dead_lettered
EVENTS_FAILED = Counter(
    "kitty_events_failed", "Event handler failures", ["event_type", "queue", "outcome"]
)
#: outcome: ok, remote_error, timeout, no_route, error
RPC_LATENCY = Histogram(
    "kitty_rpc_latency_seconds",
    "RPC call latency seen by the client",
    ["service", "method", "outcome"],
    buckets=_LATENCY_BUCKETS,
)
QUEUE_DEPTH = Gauge("kitty_queue_depth", "Messages ready and unacked in a queue", ["queue"])
QUEUE_CONSUMERS = Gauge("kitty_queue_consumers", "Consumers of a queue", ["queue"])
DLQ_DEPTH = Gauge("kitty_dlq_depth", "Dead letters waiting in a DLQ", ["queue"])
DLQ_OLDEST_AGE = Gauge(
    "kitty_dlq_oldest_age_seconds", "Age of the oldest dead letter in a DLQ", ["queue"]
)
