"""kitty_tasks: KITT's messaging platform: core, Celery runtime, built-in tasks, operations.

The names below load on first use (PEP 562): ``import kitty_tasks.core`` (and so
``import events`` or ``import rpc``) must not build the Celery app.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from kitty_tasks import _moved

if TYPE_CHECKING:
    from kitty_tasks.core.errors import (
        BatchRejected,
        BatchTimeout,
        KittyError,
        PayloadTooLarge,
        Permanent,
        PublishError,
        PublishRejected,
        PublishTimeout,
        TaskFailed,
        Unroutable,
    )
    from kitty_tasks.runtime.application import app
    from kitty_tasks.runtime.taskqueue import TaskContext, TaskQueue

__all__ = [
    "BatchRejected",
    "BatchTimeout",
    "KittyError",
    "PayloadTooLarge",
    "Permanent",
    "PublishError",
    "PublishRejected",
    "PublishTimeout",
    "TaskContext",
    "TaskFailed",
    "TaskQueue",
    "Unroutable",
    "app",
]

#: Where each public name lives; the Celery ones import Celery, so they load only when asked for.
_LAZY = {
    "app": "kitty_tasks.runtime.application",
    "TaskContext": "kitty_tasks.runtime.taskqueue",
    "TaskQueue": "kitty_tasks.runtime.taskqueue",
    **dict.fromkeys(
        (
            "BatchRejected",
            "BatchTimeout",
            "KittyError",
            "PayloadTooLarge",
            "Permanent",
            "PublishError",
            "PublishRejected",
            "PublishTimeout",
            "TaskFailed",
            "Unroutable",
        ),
        "kitty_tasks.core.errors",
    ),
}


_moved.install()


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'kitty_tasks' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
