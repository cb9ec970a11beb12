"""The Celery application of the platform, configured from ``celeryconfig``."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from celery import Celery

# Importing connects the task metrics and the publish-time stamp (Celery signals),
# the task lifecycle events and tracing.
import kitty_tasks.runtime.lifecycle
import kitty_tasks.runtime.signals
import kitty_tasks.runtime.task_tracing  # noqa: F401
from kitty_tasks.runtime.sending import batch_on

__all__ = ["KittyCelery", "app"]


class KittyCelery(Celery):  # type: ignore[misc]
    """Celery's app; what is published on one acquired producer waits for its confirms once."""

    @contextmanager
    def producer_or_acquire(self, producer: Any = None) -> Iterator[Any]:
        """Celery's producer context; a producer it acquires carries one batch of tasks.

        ``group(...).apply_async()`` (and ``chunks``) publish every task on the producer
        acquired here: their messages are collected and published when the block ends,
        with one confirm wait (``kitty_tasks.runtime.sending``). A given producer is used
        as is, as in Celery.
        """
        if producer is not None:
            yield producer
            return
        timeout = self.conf.broker_pool_acquire_timeout
        with (
            self.producer_pool.acquire(block=True, timeout=timeout) as acquired,
            batch_on(self, acquired.connection, acquired),
        ):
            yield acquired


# The configuration is read lazily, on first use, so the environment can still be set
# after import (tests point RABBITMQ_URL at a vhost of their own).
app = KittyCelery(
    "kitty_tasks",
    task_cls="kitty_tasks.runtime.task:KittyTask",
    include=[
        "kitty_tasks.tasks.research",
        "kitty_tasks.tasks.cad",
        "kitty_tasks.tasks.brain",
        "kitty_tasks.runtime.taskqueue",
    ],
)
app.config_from_object("celeryconfig")
