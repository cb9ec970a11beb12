"""Worker customisations: undecodable messages go to the DLQ; time limits fit consumer_timeout."""

from __future__ import annotations

import logging
from typing import Any

from celery import Celery
from celery.worker.consumer import Consumer

from kitty_tasks.core.dead_letters import QueueDeadLetters, oversized
from kitty_tasks.core.errors import ConfigurationError
from kitty_tasks.core.settings import get_settings
from kitty_tasks.core.topology import H_ORIGINAL_QUEUE

__all__ = [
    "TASK_LOGGERS",
    "KittyConsumer",
    "check_time_limit",
    "malformed_reason",
    "quiet_task_logs",
]

logger = logging.getLogger(__name__)

LOG_UNDECODABLE = "undecodable message (%s, content-type %r) rejected to its dead-letter queue: %s"


LOG_TOO_LARGE = "oversized task message (task %r) dead-lettered from %s: %s"
LOG_MALFORMED = "malformed task message (task %r) rejected to its dead-letter queue: %r"
#: What Celery's message parsing raises on a body of the wrong shape (not [args, kwargs, embed]).
MALFORMED_BODY_ERRORS = (TypeError, ValueError, AttributeError, IndexError, KeyError)

TIME_LIMIT_TOO_LONG = (
    "task time limit {limit:g}s ({source}) is not below the broker's consumer_timeout of "
    "{timeout_ms} ms (KITTY_BROKER_CONSUMER_TIMEOUT): RabbitMQ would close the worker's "
    "channel under a task still running and redeliver it. Lower the time limit "
    "(KITTY_TASK_TIME_LIMIT / time_limit=) or raise consumer_timeout on the broker and "
    "KITTY_BROKER_CONSUMER_TIMEOUT with it"
)
LOG_NO_TIME_LIMIT = (
    "no task time limit is set: a task running longer than the broker's consumer_timeout "
    "(%d ms) gets its channel closed; set KITTY_TASK_TIME_LIMIT"
)


def check_time_limit(app: Celery, consumer_timeout_ms: int | None = None) -> None:
    """Raise ``ConfigurationError`` if a task may hold a message past the consumer_timeout.

    The broker does not tell clients its consumer_timeout, so the worker trusts
    ``KITTY_BROKER_CONSUMER_TIMEOUT`` (default: RabbitMQ's own default, 30 minutes).
    """
    timeout_ms = (
        get_settings().broker_consumer_timeout
        if consumer_timeout_ms is None
        else (consumer_timeout_ms)
    )
    if not timeout_ms:
        return
    limits: list[tuple[float, str]] = []
    if app.conf.task_time_limit:
        limits.append((float(app.conf.task_time_limit), "task_time_limit"))
    for name, task in app.tasks.items():
        if getattr(task, "time_limit", None):
            limits.append((float(task.time_limit), f"time_limit of task {name!r}"))
    if not limits:
        logger.warning(LOG_NO_TIME_LIMIT, timeout_ms)
        return
    limit, source = max(limits)
    if limit * 1000 >= timeout_ms:
        raise ConfigurationError(
            TIME_LIMIT_TOO_LONG.format(limit=limit, source=source, timeout_ms=timeout_ms)
        )


#: Celery's loggers of a line per task: "Received task" (strategy), "succeeded in" (trace).
TASK_LOGGERS = ("celery.worker.strategy", "celery.app.trace")


def quiet_task_logs() -> None:
    """No INFO line per task received or succeeded, unless ``KITTY_LOG_TASKS`` asks for them.

    Two formatted, flushed log writes per task cost a research worker at INFO a fifth of
    its drain rate (benchmarks/RESULTS.md); the lifecycle events, the task metrics and
    Flower report every task already. Warnings and errors (a failing task) still log.
    Celery reads these levels once, when it builds each task's strategy and tracer.
    """
    if not get_settings().log_tasks:
        for name in TASK_LOGGERS:
            logging.getLogger(name).setLevel(logging.WARNING)


def malformed_reason(message: Any) -> str | None:
    """Why a protocol-2 task message is not ``[args, kwargs, embed]``; None when it is.

    Undecodable bodies and messages without task headers are left to Celery's own
    handling (``on_decode_error``, ``on_unknown_message``), which dead-letters them.
    """
    if "task" not in (message.headers or {}):
        return None
    try:
        body = message.payload  # decoded once; Celery's Request reuses kombu's cached decode
    except Exception:
        return None
    if not isinstance(body, (list, tuple)) or len(body) != 3:
        return f"body is {type(body).__name__}, not [args, kwargs, embed]"
    args, kwargs, embed = body
    if not isinstance(args, (list, tuple)):
        return f"args is {type(args).__name__}, not a list"
    if not isinstance(kwargs, dict):
        return f"kwargs is {type(kwargs).__name__}, not an object"
    if embed is not None and not isinstance(embed, dict):
        return f"embed is {type(embed).__name__}, not an object"
    return None


class KittyConsumer(Consumer):  # type: ignore[misc]
    """Celery's consumer, but a body it cannot decode is rejected (dead-lettered), not acked."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # Built while the worker starts, before it connects: refuse here, not mid-task.
        check_time_limit(self.app)
        # After Celery set up logging, before it builds the strategies and tracers.
        quiet_task_logs()
        self._max_bytes = get_settings().max_message_bytes
        self._dead_letters: QueueDeadLetters | None = None

    def create_task_handler(self, *args: Any, **kwargs: Any) -> Any:
        """Celery's handler, but a body that breaks Celery's own parsing is dead-lettered."""
        handler = super().create_task_handler(*args, **kwargs)

        def on_task_received(message: Any) -> Any:
            too_large = oversized(message.body, self._max_bytes)
            if too_large is not None:
                self._dead_letter(message, too_large)
                return None
            reason = malformed_reason(message)
            if reason is not None:
                # Celery would fail such a task "outside its body" and ack it: lost silently.
                logger.error(LOG_MALFORMED, message.headers.get("task"), reason)
                message.reject_log_error(logger, self.connection_errors, requeue=False)
                return None
            try:
                return handler(message)
            except MALFORMED_BODY_ERRORS as exc:
                # E.g. a body of ``null`` or ``0`` under task headers: Celery's strategy
                # raises TypeError, which would restart the consumer and redeliver the
                # message forever. Reject it (no requeue) so it goes to the DLQ with x-death.
                if message.acknowledged:
                    raise
                logger.error(LOG_MALFORMED, message.headers.get("task"), exc, exc_info=True)
                message.reject_log_error(logger, self.connection_errors, requeue=False)
                return None

        return on_task_received

    def _dead_letter(self, message: Any, exc: Exception) -> None:
        """Copy ``message`` to its queue's DLQ with the reason, then ack; reject if that fails."""
        headers = message.headers or {}
        queue = str(headers.get(H_ORIGINAL_QUEUE) or message.delivery_info.get("routing_key"))
        logger.error(LOG_TOO_LARGE, headers.get("task"), queue, exc)
        if self._dead_letters is None:
            # Its own connection: this one belongs to the worker's event loop.
            url = self.app.connection_for_write().as_uri(include_password=True)
            self._dead_letters = QueueDeadLetters(url)
        if self._dead_letters.dead_letter(message, exc, queue=queue).ack:
            message.ack()
        else:
            # The copy was not confirmed: rejected, it still reaches the DLQ (with x-death).
            message.reject_log_error(logger, self.connection_errors, requeue=False)

    def shutdown(self) -> None:
        """Celery's shutdown, and the dead letters' connection closed."""
        super().shutdown()
        if self._dead_letters is not None:
            self._dead_letters.close()

    def on_decode_error(self, message: Any, exc: Exception) -> None:
        # Celery's default acks the message, which silently drops it; rejecting
        # without requeue hands it to the queue's dead-letter exchange with x-death.
        logger.error(LOG_UNDECODABLE, type(exc).__name__, message.content_type, exc)
        message.reject_log_error(logger, self.connection_errors, requeue=False)
