"""kitty_tasks: KITT's task platform on Celery and RabbitMQ (topology, retry ladder, DLQs)."""

from __future__ import annotations

from kitty_tasks.application import app
from kitty_tasks.errors import (
    KittyError,
    PayloadTooLarge,
    Permanent,
    PublishError,
    PublishRejected,
    PublishTimeout,
    Unroutable,
)
from kitty_tasks.taskqueue import TaskContext, TaskQueue

__all__ = [
    "KittyError",
    "PayloadTooLarge",
    "Permanent",
    "PublishError",
    "PublishRejected",
    "PublishTimeout",
    "TaskContext",
    "TaskQueue",
    "Unroutable",
    "app",
]
