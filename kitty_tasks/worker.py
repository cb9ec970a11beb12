"""Worker customisations: undecodable messages go to the DLQ; time limits fit consumer_timeout."""

from __future__ import annotations

import logging
from typing import Any

from celery import Celery
from celery.worker.consumer import Consumer

from kitty_tasks.errors import ConfigurationError
from kitty_tasks.settings import get_settings

__all__ = ["KittyConsumer", "check_time_limit"]

logger = logging.getLogger(__name__)

LOG_UNDECODABLE = "undecodable message (%s, content-type %r) rejected to its dead-letter queue: %s"


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


class KittyConsumer(Consumer):  # type: ignore[misc]
    """Celery's consumer, but a body it cannot decode is rejected (dead-lettered), not acked."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # Built while the worker starts, before it connects: refuse here, not mid-task.
        check_time_limit(self.app)

    def on_decode_error(self, message: Any, exc: Exception) -> None:
        # Celery's default acks the message, which silently drops it; rejecting
        # without requeue hands it to the queue's dead-letter exchange with x-death.
        logger.error(LOG_UNDECODABLE, type(exc).__name__, message.content_type, exc)
        message.reject_log_error(logger, self.connection_errors, requeue=False)
