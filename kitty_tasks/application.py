"""The Celery application of the platform, configured from ``celeryconfig``."""

from __future__ import annotations

from celery import Celery

__all__ = ["app"]

app = Celery("kitty_tasks", task_cls="kitty_tasks.task:KittyTask")
app.config_from_object("celeryconfig")
# Importing the task modules registers them on the app.
app.conf.include = ["kitty_tasks.research", "kitty_tasks.cad", "kitty_tasks.brain", "kitty_tasks.taskqueue"]
