"""Prometheus metrics of the platform (prefix ``kitty_``); every part records into these.

``serve_metrics`` exposes them on ``/metrics``: Celery workers, ``EventBus.start_consuming``
and ``RPCServer.start`` call it when ``KITTY_METRICS_PORT`` is set, and any other process
(a publisher, an RPC caller) may call it itself.
"""

from __future__ import annotations

import errno
import logging
import os
import threading

from prometheus_client import (
    REGISTRY,
    CollectorRegistry,
    Counter,
    Histogram,
    multiprocess,
    start_http_server,
)

from kitty_tasks.core.settings import get_settings

__all__ = [
    "EVENTS_CONSUMED",
    "EVENTS_FAILED",
    "EVENTS_PUBLISHED",
    "EVENTS_UNROUTABLE",
    "MULTIPROC_ENV",
    "RPC_LATENCY",
    "RPC_REQUESTS",
    "TASKS",
    "TASK_EVENTS_FAILED",
    "TASK_QUEUE_WAIT",
    "TASK_RUNTIME",
    "metrics_registry",
    "serve_metrics",
]

logger = logging.getLogger(__name__)

#: prometheus-client's switch to multiprocess mode (read at import, so set before start).
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
#: Where ``serve_metrics`` listens unless told otherwise: it is there to be scraped.
DEFAULT_METRICS_ADDR = "0.0.0.0"  # noqa: S104

LOG_SERVING = "metrics on http://%s:%d/metrics (%s)"
LOG_CANNOT_SERVE = "cannot serve metrics on %s:%d: %s"
LOG_SHARED_PORT = (
    "metrics port %s:%d is taken; this process's samples go to %s, which another process "
    "of the same worker serves there (make run's research workers share one port)"
)
LOG_ALREADY_SERVING = "metrics already served on port %d; not serving them again on %d"

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
#: event_type: <domain>.task.completed|failed|dead_lettered
TASK_EVENTS_FAILED = Counter(
    "kitty_task_events_failed",
    "Task lifecycle events not published (the task's own outcome stands)",
    ["event_type"],
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
EVENTS_UNROUTABLE = Counter(
    "kitty_events_unroutable",
    "Events confirmed but routed to no queue (published with allow_unroutable)",
    ["event_type", "source"],
)
#: outcome: ok, error, bad_request, expired, dead_lettered
RPC_REQUESTS = Counter(
    "kitty_rpc_requests",
    "RPC requests handled by a server",
    ["service", "method", "outcome"],
)

_serving_lock = threading.Lock()
#: The port this process serves /metrics on, once it does (one endpoint per process).
_serving: dict[str, int] = {}


def metrics_registry() -> CollectorRegistry:
    """What /metrics shows: every process's samples in multiprocess mode, else this process's."""
    if os.environ.get(MULTIPROC_ENV):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        return registry
    return REGISTRY


def serve_metrics(port: int | None = None, addr: str = DEFAULT_METRICS_ADDR) -> int | None:
    """Serve /metrics in a background thread, once per process; returns the port served.

    ``port`` defaults to ``KITTY_METRICS_PORT`` (0 picks a free one). Once serving, every
    call returns that port, whatever it asks for. None when no port is set, or when the port
    is taken (logged: a process without metrics still does its work; a later call tries again).
    """
    with _serving_lock:
        served = _serving.get("port")
        if served is not None:
            if port not in (None, 0, served):
                logger.warning(LOG_ALREADY_SERVING, served, port)
            return served
        if port is None:
            port = get_settings().metrics_port
            if port is None:
                return None
        try:
            server, _ = start_http_server(port, addr=addr, registry=metrics_registry())
        except OSError as err:
            shared = os.environ.get(MULTIPROC_ENV)
            if shared and err.errno == errno.EADDRINUSE:
                # Several processes of one worker (honcho's -c research=2) write samples to
                # one multiprocess directory; whichever binds the port first serves them all.
                logger.info(LOG_SHARED_PORT, addr, port, shared)
            else:
                logger.error(LOG_CANNOT_SERVE, addr, port, err)
            return None
        served = _serving["port"] = int(server.server_port)
    mode = "multiprocess" if os.environ.get(MULTIPROC_ENV) else "single process"
    logger.info(LOG_SERVING, addr, served, mode)
    return served
