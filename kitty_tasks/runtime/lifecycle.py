"""Task lifecycle events: ``<domain>.task.completed|failed|dead_lettered`` on ``kitty.events``.

Published from Celery's ``task_success``/``task_failure`` signals, which the tracer sends
after the result is stored and after the task's own ``on_success``/``on_failure``; a
rejected task whose dead-letter copy could not be published is reported from
``task_postrun``. Eager and direct calls publish nothing, nor do retries.

Each worker process has one ``EventBus`` (one confirm channel), made on first use, so a
prefork child makes its own after the fork; its pipeline's thread publishes what the
pool's threads hand over in batches, and each task waits for its event's confirm at most
``KITTY_TASK_EVENTS_TIMEOUT`` seconds. A failure is
logged and counted, never raised: the task's own outcome and its ack stand.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Any

from celery import signals
from celery.states import REJECTED

from events.bus import EventBus
from events.task_events import (
    TASK_COMPLETED,
    TASK_DEAD_LETTERED,
    TASK_FAILED,
    register_task_event_schemas,
    task_event_type,
)
from kitty_tasks.core.metrics import TASK_EVENTS_FAILED
from kitty_tasks.core.settings import get_settings
from kitty_tasks.runtime.lifecycle_data import error_data, summarise_result, task_domain
from kitty_tasks.runtime.task import DEAD_LETTER_FAILED, DEAD_LETTERED

__all__ = ["LifecyclePublisher", "lifecycle_enabled", "publisher"]

logger = logging.getLogger(__name__)

LOG_NOT_PUBLISHED = "task %s[%s]: lifecycle event %s not published (%s); the task's outcome stands"
#: Celery's own tasks (chord_unlock polls, backend_cleanup) are plumbing, not platform work.
CELERY_INTERNAL_PREFIX = "celery."

#: task id -> monotonic start of its run in this process.
_started: dict[str, float] = {}
#: Domains whose lifecycle schemas this process has registered (the built-in ones at import).
_registered: set[str] = set()


def lifecycle_enabled(task: Any) -> bool:
    """True when ``task``'s current run, in a worker, should end with a lifecycle event."""
    if not get_settings().task_events or getattr(task, "lifecycle_events", False) is not True:
        return False
    if str(task.name).startswith(CELERY_INTERNAL_PREFIX):
        return False
    request = task.request
    return not (request.is_eager or request.called_directly)


class LifecyclePublisher:
    """This process's lifecycle publishing: one ``EventBus``, its events confirmed in batches."""

    def __init__(self, url: str, source: str) -> None:
        self.url = url
        self.source = source
        self.pid = os.getpid()
        self._bus: EventBus | None = None
        self._opening = threading.Lock()

    def publish(self, event_type: str, data: dict[str, Any], correlation_id: str | None) -> None:
        """Publish and wait for the confirm, ``KITTY_TASK_EVENTS_TIMEOUT`` at most; raises."""
        timeout = get_settings().task_events_timeout
        # The bus's pipeline: the events of tasks finishing at once on a threads pool share
        # one confirm wait (one at a time, eight threads queued behind each confirm and
        # halved the drain). Called from the task's thread, so a traced event's send is a
        # child of the task's run.
        sent = self._open(timeout).publish_pipelined(event_type, data, correlation_id)
        try:
            sent.result(timeout=timeout)
        except FutureTimeout:
            sent.cancel()  # if its batch has not gone out; one in flight may still arrive
            raise TimeoutError(
                f"no confirm within {timeout:g}s (KITTY_TASK_EVENTS_TIMEOUT)"
            ) from None

    def _open(self, timeout: float) -> EventBus:
        with self._opening:
            if self._bus is None:
                self._bus = EventBus(
                    self.url,
                    source=self.source,
                    publish_timeout=timeout,
                    pool_limit=1,  # the pipeline's one thread publishes
                    allow_unroutable=True,  # no subscriber is no error: the task ended anyway
                    declare=False,
                ).connect(max_retries=0)
            return self._bus

    def close(self) -> None:
        """Close the bus: its publishing thread stops and its connection closes."""
        with self._opening:
            bus, self._bus = self._bus, None
        if bus is not None:
            bus.disconnect()


_lock = threading.Lock()
#: broker URL -> this process's publisher to it (one, unless apps of several brokers run here).
_publishers: dict[str, LifecyclePublisher] = {}


def publisher(url: str, source: str) -> LifecyclePublisher:
    """This process's publisher to ``url``, made on first use (after a prefork child's fork)."""
    with _lock:
        current = _publishers.get(url)
        if current is not None and current.pid != os.getpid():
            # Inherited through fork: its socket is the parent's, so it is left alone.
            current = None
        if current is None:
            current = _publishers[url] = LifecyclePublisher(url, source)
        return current


def _close_publishers(**_: Any) -> None:
    """Close this process's publishers (the worker or a pool child is shutting down)."""
    with _lock:
        closing = list(_publishers.values())
        _publishers.clear()
    for current in closing:
        if current.pid == os.getpid():
            current.close()


def _forget_inherited(**_: Any) -> None:
    """A fresh pool child starts without its parent's publishers."""
    with _lock:
        _publishers.clear()
    _started.clear()


def _queue_of(task: Any) -> str:
    source_queue = getattr(task, "source_queue", None)
    if callable(source_queue):
        return str(source_queue())
    delivery = task.request.delivery_info or {}
    return str(delivery.get("routing_key") or "")


def _publish(task: Any, task_id: str, outcome: str, fields: dict[str, Any]) -> None:
    """Build and publish ``task``'s lifecycle event; any failure is logged and counted."""
    request = task.request
    event_type = outcome
    try:
        queue = _queue_of(task)
        domain = task_domain(str(task.name), queue, getattr(task, "event_domain", None))
        event_type = task_event_type(domain, outcome)
        if domain not in _registered:
            register_task_event_schemas(domain)
            _registered.add(domain)
        started = _started.get(task_id)
        data = {
            "task_id": task_id,
            "task": str(task.name),
            "queue": queue,
            "attempts": int(request.retries or 0) + 1,
            "runtime": round(time.monotonic() - started, 6) if started is not None else 0.0,
            **fields,
        }
        source = str(request.hostname or f"kitty-worker@{socket.gethostname()}")
        url = str(task.app.conf.broker_url or get_settings().rabbitmq_url)
        publisher(url, source).publish(event_type, data, request.correlation_id or task_id)
    except Exception as err:  # never the task's failure: it has ended and is being acked
        logger.warning(LOG_NOT_PUBLISHED, task.name, task_id, event_type, str(err) or repr(err))
        TASK_EVENTS_FAILED.labels(event_type=event_type).inc()


def _on_prerun(task_id: str | None = None, **_: Any) -> None:
    """Remember when the run started, for the event's ``runtime``."""
    if task_id is not None:
        _started[task_id] = time.monotonic()


def _on_success(sender: Any = None, result: Any = None, **_: Any) -> None:
    """``<domain>.task.completed``, after the result was stored."""
    if sender is None or not lifecycle_enabled(sender):
        return
    limit = get_settings().max_message_bytes
    _publish(sender, str(sender.request.id), TASK_COMPLETED, summarise_result(result, limit))


def _on_failure(
    sender: Any = None, task_id: str | None = None, exception: BaseException | None = None, **_: Any
) -> None:
    """``<domain>.task.dead_lettered`` when its DLQ copy was published, else ``failed``."""
    if sender is None or task_id is None or not lifecycle_enabled(sender):
        return
    if sender.request.id != task_id:
        return  # reported by the worker's main process (hard time limit): no request to read
    outcome = TASK_DEAD_LETTERED if sender.request.get(DEAD_LETTERED) else TASK_FAILED
    _publish(sender, task_id, outcome, {"error": error_data(exception)})


def _on_postrun(
    task_id: str | None = None, task: Any = None, state: str | None = None, **_: Any
) -> None:
    """``failed`` for a task rejected because its DLQ copy could not be published."""
    if task_id is None:
        return
    try:
        if task is None or state != REJECTED or not lifecycle_enabled(task):
            return
        error = task.request.get(DEAD_LETTER_FAILED)
        if error is not None:
            _publish(task, task_id, TASK_FAILED, {"error": error_data(error)})
    finally:
        _started.pop(task_id, None)


# Connected at import, strongly: importing this module is what turns the events on.
signals.task_prerun.connect(_on_prerun, weak=False)
signals.task_success.connect(_on_success, weak=False)
signals.task_failure.connect(_on_failure, weak=False)
signals.task_postrun.connect(_on_postrun, weak=False)
signals.worker_process_init.connect(_forget_inherited, weak=False)
signals.worker_process_shutdown.connect(_close_publishers, weak=False)
signals.worker_shutdown.connect(_close_publishers, weak=False)
