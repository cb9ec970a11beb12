"""Task metrics from Celery signals, and the worker's /metrics endpoint on KITTY_METRICS_PORT.

Prefork workers run tasks in child processes: with ``PROMETHEUS_MULTIPROC_DIR``
set (before the worker starts) every child writes its samples there and the
parent's endpoint sums them. Without it only the solo and threads pools report.
"""

from __future__ import annotations

import functools
import logging
import os
import time
from typing import Any

from celery import signals
from celery.states import FAILURE, RETRY, SUCCESS
from prometheus_client import multiprocess

from kitty_tasks.core.metrics import (
    MULTIPROC_ENV,
    TASK_QUEUE_WAIT,
    TASK_RUNTIME,
    TASKS,
    serve_metrics,
)
from kitty_tasks.core.settings import get_settings
from kitty_tasks.core.topology import H_PUBLISHED_AT
from kitty_tasks.runtime.task import DEAD_LETTERED

__all__: list[str] = []

logger = logging.getLogger(__name__)

LOG_NO_MULTIPROC = (
    "KITTY_METRICS_PORT is set but PROMETHEUS_MULTIPROC_DIR is not: a prefork worker's "
    "children record into their own memory and /metrics will not show their tasks"
)

#: task id -> monotonic start, per process (a child runs one task at a time, threads several).
_running: dict[str, float] = {}


def _queue_of(task: Any) -> str:
    source = getattr(task, "source_queue", None)
    if callable(source):
        try:
            return str(source())
        except Exception:  # a label is never worth failing a task for
            logger.debug("no source queue for %s", getattr(task, "name", task), exc_info=True)
    delivery = getattr(task.request, "delivery_info", None) or {}
    return str(delivery.get("routing_key") or "unknown")


@functools.lru_cache(maxsize=4096)
def _child(metric: Any, *labels: str) -> Any:
    """``metric.labels(*labels)``, looked up once: a task's labels repeat for every run."""
    return metric.labels(*labels)


def _stamp_publish_time(headers: dict[str, Any] | None = None, **_: Any) -> None:
    """Stamp every task message with its publish time, for the queue-wait histogram."""
    if headers is not None:
        headers[H_PUBLISHED_AT] = time.time()


def _on_prerun(task_id: str | None = None, task: Any = None, **_: Any) -> None:
    """Remember the start, and observe how long a first attempt waited in its queue."""
    if task is None or task_id is None:
        return
    _running[task_id] = time.monotonic()
    published = task.request.get(H_PUBLISHED_AT)
    # A retry waits in the delay ladder on purpose; that wait is not queue wait.
    if published is None or int(task.request.retries or 0) > 0:
        return
    try:
        waited = max(0.0, time.time() - float(published))
    except (TypeError, ValueError):
        return
    _child(TASK_QUEUE_WAIT, task.name, _queue_of(task)).observe(waited)


def _on_postrun(
    task_id: str | None = None, task: Any = None, state: str | None = None, **_: Any
) -> None:
    """Count the outcome and observe the run time."""
    if task is None or task_id is None:
        return
    started = _running.pop(task_id, None)
    queue = _queue_of(task)
    if started is not None:
        _child(TASK_RUNTIME, task.name, queue).observe(time.monotonic() - started)
    if state == SUCCESS:
        outcome = "succeeded"
    elif state == RETRY:
        outcome = "retried"
    elif state == FAILURE:
        outcome = "dead_lettered" if task.request.get(DEAD_LETTERED) else "failed"
    else:
        return  # ignored or rejected: the message was handed elsewhere
    _child(TASKS, task.name, queue, outcome).inc()


def _serve_worker_metrics(**_: Any) -> None:
    """Start the worker's metrics endpoint when KITTY_METRICS_PORT is set."""
    port = get_settings().metrics_port
    if port is None:
        return
    if not os.environ.get(MULTIPROC_ENV):
        logger.warning(LOG_NO_MULTIPROC)
    serve_metrics(port)


def _forget_child(pid: int | None = None, **_: Any) -> None:
    """Drop a finished child's live gauges from the multiprocess directory."""
    if os.environ.get(MULTIPROC_ENV):
        multiprocess.mark_process_dead(pid or os.getpid())  # type: ignore[no-untyped-call]


# Connected at import, strongly: importing this module is what turns the metrics on.
signals.before_task_publish.connect(_stamp_publish_time, weak=False)
signals.task_prerun.connect(_on_prerun, weak=False)
signals.task_postrun.connect(_on_postrun, weak=False)
signals.worker_init.connect(_serve_worker_metrics, weak=False)
signals.worker_process_shutdown.connect(_forget_child, weak=False)
