"""The Celery application of the platform, configured from ``celeryconfig``."""

from __future__ import annotations

from celery import Celery

# Importing connects the task metrics and the publish-time stamp (Celery signals),
# the task lifecycle events and tracing.
import kitty_tasks.runtime.lifecycle
import kitty_tasks.runtime.signals
import kitty_tasks.runtime.task_tracing  # noqa: F401

__all__ = ["app"]

# The configuration is read lazily, on first use, so the environment can still be set
# after import (tests point RABBITMQ_URL at a vhost of their own).
app = Celery(
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
