"""Task lifecycle events: ``<domain>.task.completed|failed|dead_lettered`` on ``kitty.events``.

Published from Celery's ``task_success``/``task_failure`` signals, which the tracer sends
after the result is stored and after the task's own ``on_success``/``on_failure``; a
rejected task whose dead-letter copy could not be published is reported from
``task_postrun``. Eager and direct calls publish nothing, nor do retries.

Events go out on the Celery app's own connection pool (each process, prefork children
included, has its own), each confirmed; the task waits for the confirm at most
``KITTY_TASK_EVENTS_TIMEOUT`` seconds. A failure is logged and counted, never raised:
the task's own outcome and its ack stand. The worker writes the envelope itself
(``events.trusted``): its values need no pydantic check unless the application
registered a schema of its own for the event type.
"""

from __future__ import annotations

import functools
import logging
import socket
import time
import uuid
from datetime import datetime, timezone
from typing import Any

from celery import signals
from celery.states import REJECTED

from events.publishing import build_event, encode, end_sends, start_sends
from events.schemas import default_registry
from events.task_events import (
    TASK_COMPLETED,
    TASK_DEAD_LETTERED,
    TASK_FAILED,
    TaskCompleted,
    TaskFailed,
    register_task_event_schemas,
    task_event_type,
)
from events.trusted import MAX_FIELD_CHARS, trusted_message
from kitty_tasks.core import tracing
from kitty_tasks.core.metrics import TASK_EVENTS_FAILED
from kitty_tasks.core.publisher import OutgoingMessage
from kitty_tasks.core.settings import get_settings
from kitty_tasks.core.topology import EVENTS_EXCHANGE
from kitty_tasks.runtime.lifecycle_data import error_data, summarise_result, task_domain
from kitty_tasks.runtime.sending import publisher_of
from kitty_tasks.runtime.task import DEAD_LETTER_FAILED, DEAD_LETTERED

__all__ = ["LifecyclePublisher", "lifecycle_enabled"]

logger = logging.getLogger(__name__)

LOG_NOT_PUBLISHED = "task %s[%s]: lifecycle event %s not published (%s); the task's outcome stands"
#: Celery's own tasks (chord_unlock polls, backend_cleanup) are plumbing, not platform work.
CELERY_INTERNAL_PREFIX = "celery."

#: The platform's lifecycle schemas: the data this module builds always matches them.
OWN_MODELS = (TaskCompleted, TaskFailed)

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
    """This process's lifecycle publishing, through the Celery app's own connection pool."""

    # Celery's connection pool (the one under its producer pool), not a connection of our
    # own: a worker process that opened sockets of its own while its consumer reconnected
    # (a broker restart) stopped consuming for good, its hub stuck on a reused descriptor
    # (test_broker_crash). The pool's connections are the ones task messages go out on
    # from task threads (retries, chains), on the same confirm channel (sending.py).

    def __init__(self, app: Any, source: str) -> None:
        self.app = app
        self.source = source

    def publish(self, event_type: str, data: dict[str, Any], correlation_id: str | None) -> None:
        """Publish, confirmed, within ``KITTY_TASK_EVENTS_TIMEOUT``; raises on failure."""
        settings = get_settings()
        timeout = settings.task_events_timeout
        version = default_registry.latest(event_type) or 1
        if not _trusted(event_type, version, self.source, correlation_id):
            self._publish_checked(event_type, data, version, correlation_id)
            return
        event_id = str(uuid.uuid4())
        send = (
            tracing.start_send(
                EVENTS_EXCHANGE, event_type, message_id=event_id, conversation_id=correlation_id
            )
            if tracing.enabled()
            else None
        )
        try:
            with self.app.pool.acquire(block=True, timeout=timeout) as connection:
                message = trusted_message(
                    event_type,
                    data,
                    event_id=event_id,
                    timestamp=datetime.now(timezone.utc),
                    source=self.source,
                    version=version,
                    correlation_id=correlation_id,
                    traceparent=None if send is None else send.traceparent,
                    user_id=connection.userid,
                    max_bytes=settings.max_message_bytes,
                )
                _confirm(connection, message, timeout)
        except BaseException as err:
            if send is not None:
                send.end(err)
            raise
        if send is not None:
            send.end()

    def _publish_checked(
        self, event_type: str, data: dict[str, Any], version: int, correlation_id: str | None
    ) -> None:
        """The events layer's path: built and validated against the application's schema."""
        settings = get_settings()
        event = build_event(
            event_type,
            data,
            source=self.source,
            version=version,
            registry=default_registry,
            correlation_id=correlation_id,
        )
        (event,), sends = start_sends([event])
        try:
            with self.app.pool.acquire(block=True, timeout=settings.task_events_timeout) as conn:
                extra = {} if conn.userid is None else {"user_id": conn.userid}
                message = encode(event, extra, max_bytes=settings.max_message_bytes)
                _confirm(conn, message, settings.task_events_timeout)
        except BaseException as err:
            end_sends(sends, err)
            raise
        end_sends(sends)


def _trusted(event_type: str, version: int, source: str, correlation_id: str | None) -> bool:
    """True when the worker's own values make a valid event (no pydantic check needed).

    They do when the schema is the platform's own (an application may register its own
    for a lifecycle type: then its schema is checked) and the strings fit the envelope.
    """
    if default_registry.model_for(event_type, version) not in OWN_MODELS:
        return False
    return len(source) <= MAX_FIELD_CHARS and len(correlation_id or "") <= MAX_FIELD_CHARS


def _confirm(connection: Any, message: OutgoingMessage, timeout: float) -> None:
    """Publish ``message`` on the connection's confirm channel and wait for its confirm."""
    publisher = publisher_of(connection)
    try:
        # Unroutable is no error: with no subscriber bound, nobody misses the notice.
        publisher.publish_batch([message], allow_unroutable=True, timeout=timeout)
    except connection.recoverable_connection_errors:
        # A pooled connection the broker closed: its next use reconnects.
        publisher.close()
        connection.collect()
        raise


#: A task's domain is the same for each of its runs from one queue: worked out once.
_domain = functools.lru_cache(maxsize=1024)(task_domain)


def _forget_inherited(**_: Any) -> None:
    """A fresh pool child starts without its parent's run start times."""
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
        domain = _domain(str(task.name), queue, getattr(task, "event_domain", None))
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
        LifecyclePublisher(task.app, source).publish(
            event_type, data, request.correlation_id or task_id
        )
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
