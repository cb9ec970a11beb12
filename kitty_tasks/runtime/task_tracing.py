"""Tracing of Celery tasks from Celery's signals: enqueue, run, retry and dead-letter.

Every task publish (a client's ``delay``, a retry copy to the ladder, a dead letter to
``dlx``) gets a ``send`` span and a ``traceparent`` header in ``before_task_publish``;
a worker's run is a ``process`` span, a child of the publish that sent it, current from
``task_prerun`` to ``task_postrun``. A retry copy is published inside the failed run, so
the next attempt's span is a child of that retry's ``send``: one trace across attempts.
"""

from __future__ import annotations

from typing import Any

from celery import signals

from kitty_tasks.core import tracing
from kitty_tasks.core.topology import H_TRACEPARENT, H_TRACESTATE
from kitty_tasks.runtime.ladder import SENDING, publish_finished
from kitty_tasks.runtime.task import DEAD_LETTERED

__all__: list[str] = []

#: task id -> its run's ``process`` span (a thread pool runs several at once).
_running: dict[str, tracing.Process] = {}


def _before_publish(
    sender: Any = None,
    exchange: Any = None,
    routing_key: str | None = None,
    headers: dict[str, Any] | None = None,
    properties: dict[str, Any] | None = None,
    **_: Any,
) -> None:
    """Start the publish's ``send`` span and put its context in the message headers."""
    if headers is None or not tracing.enabled():
        return
    publish_finished()  # a publish that raised before after_task_publish: ended here
    send = tracing.start_send(
        str(getattr(exchange, "name", exchange) or ""),
        str(routing_key or ""),
        message_id=headers.get("id"),
        conversation_id=(properties or {}).get("correlation_id"),
    )
    # Replaces the context a retry or dead-letter copy inherited from its original.
    headers.pop(H_TRACESTATE, None)
    headers.update(send.headers)
    SENDING.set(send)


def _after_publish(**_: Any) -> None:
    """The broker confirmed the task message: end its ``send`` span."""
    send = SENDING.get()
    if send is not None:
        SENDING.set(None)
        send.end()


def _on_prerun(task_id: str | None = None, task: Any = None, **_: Any) -> None:
    """Start the run's ``process`` span, a child of the ``send`` that published it."""
    if task_id is None or task is None or not tracing.enabled():
        return
    request = task.request
    if request.is_eager or request.called_directly:
        return  # a local call: no message was consumed
    delivery = request.delivery_info or {}
    source = getattr(task, "source_queue", None)
    queue = source() if callable(source) else delivery.get("routing_key")
    carrier = {key: request.get(key) for key in (H_TRACEPARENT, H_TRACESTATE)}
    _running[task_id] = tracing.start_process(
        carrier,
        exchange=str(delivery.get("exchange") or ""),
        routing_key=str(delivery.get("routing_key") or ""),
        queue=str(queue or ""),
        message_id=task_id,
        conversation_id=request.correlation_id,
        attempt=int(request.retries or 0) + 1,
    )


def _on_retry(request: Any = None, reason: Any = None, **_: Any) -> None:
    """The run failed and its retry copy waits in the ladder: the span says so."""
    error = getattr(reason, "exc", None) or reason
    if isinstance(error, BaseException):
        tracing.failed(error, "retried")


def _on_failure(sender: Any = None, exception: BaseException | None = None, **_: Any) -> None:
    """The run failed for good: dead-lettered (its DLQ copy was confirmed) or failed."""
    if exception is None or sender is None:
        return
    outcome = "dead_lettered" if sender.request.get(DEAD_LETTERED) else "failed"
    tracing.failed(exception, outcome)


def _on_postrun(task_id: str | None = None, **_: Any) -> None:
    process = _running.pop(task_id, None) if task_id is not None else None
    if process is not None:
        process.end()


def _after_fork(**_: Any) -> None:
    """A prefork child builds its own provider (and export thread): the parent's are not its."""
    tracing.reset()
    tracing.enabled()


def _flush(**_: Any) -> None:
    tracing.shutdown()


# Connected at import, strongly: importing this module (application.py does) turns it on.
signals.before_task_publish.connect(_before_publish, weak=False)
signals.after_task_publish.connect(_after_publish, weak=False)
signals.task_prerun.connect(_on_prerun, weak=False)
signals.task_retry.connect(_on_retry, weak=False)
signals.task_failure.connect(_on_failure, weak=False)
signals.task_postrun.connect(_on_postrun, weak=False)
signals.worker_process_init.connect(_after_fork, weak=False)
signals.worker_process_shutdown.connect(_flush, weak=False)
signals.worker_shutdown.connect(_flush, weak=False)
