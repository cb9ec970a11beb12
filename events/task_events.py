"""Schemas of the task lifecycle events: ``<domain>.task.completed|failed|dead_lettered``."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from events.errors import SchemaError
from events.schemas import SchemaRegistry, default_registry
from kitty_tasks.core.topology import TASK_QUEUES

__all__ = [
    "TASK_COMPLETED",
    "TASK_DEAD_LETTERED",
    "TASK_FAILED",
    "TASK_OUTCOMES",
    "ResultSummary",
    "TaskCompleted",
    "TaskError",
    "TaskFailed",
    "register_task_event_schemas",
    "task_event_type",
]

#: The last word of each lifecycle event type.
TASK_COMPLETED = "completed"
TASK_FAILED = "failed"
TASK_DEAD_LETTERED = "dead_lettered"
TASK_OUTCOMES = (TASK_COMPLETED, TASK_FAILED, TASK_DEAD_LETTERED)


def task_event_type(domain: str, outcome: str) -> str:
    """``<domain>.task.<outcome>``, e.g. ``research.task.completed``."""
    if outcome not in TASK_OUTCOMES:
        raise ValueError(f"outcome must be one of {', '.join(TASK_OUTCOMES)}, got {outcome!r}")
    return f"{domain}.task.{outcome}"


class _TaskEvent(BaseModel):
    """What every lifecycle event says about the task run that ended."""

    # Extra fields are kept: a later version may add some, and version 1 readers ignore them.
    model_config = ConfigDict(extra="allow")

    task_id: str = Field(min_length=1)
    task: str = Field(min_length=1, description="the Celery task name, e.g. research.paper")
    queue: str = Field(description="the queue the task was consumed from")
    attempts: int = Field(ge=1, description="runs of this task, the last included")
    runtime: float = Field(ge=0, description="seconds the last run took")


class ResultSummary(BaseModel):
    """Stands in for a result too large to carry in an event."""

    type: str = Field(description="the JSON type of the result: object, array, string, ...")
    size: int = Field(ge=0, description="bytes of the result as JSON")
    note: str


class TaskCompleted(_TaskEvent):
    """``<domain>.task.completed``: the task returned; ``result`` or, when large, its summary."""

    result: Any = None
    result_summary: ResultSummary | None = None


class TaskError(BaseModel):
    """The exception that ended a task: its class name and (trimmed) message."""

    type: str
    message: str


class TaskFailed(_TaskEvent):
    """``<domain>.task.failed`` and ``<domain>.task.dead_lettered``: the task's last error."""

    error: TaskError


def register_task_event_schemas(domain: str, registry: SchemaRegistry | None = None) -> None:
    """Register the three lifecycle schemas for ``domain`` (a no-op when already there).

    A schema registered by the application itself for one of these types wins: it is
    kept, not replaced.
    """
    target = registry or default_registry
    for outcome, model in (
        (TASK_COMPLETED, TaskCompleted),
        (TASK_FAILED, TaskFailed),
        (TASK_DEAD_LETTERED, TaskFailed),
    ):
        try:
            target.register(task_event_type(domain, outcome), model)
        except SchemaError:
            continue  # the application's own schema for this type stays


#: The domains of the platform's task queues (research.tasks -> research, ...).
BUILTIN_DOMAINS = tuple(sorted({queue.split(".", 1)[0] for queue in TASK_QUEUES}))

for _domain in BUILTIN_DOMAINS:
    register_task_event_schemas(_domain)
