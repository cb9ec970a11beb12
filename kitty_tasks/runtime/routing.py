"""Celery queues and routes, derived from the topology so they cannot disagree with it."""

from __future__ import annotations

from typing import Any

from kombu import Exchange, Queue

from kitty_tasks.core.topology import (
    BRAIN_COMMANDS,
    CAD_TASKS,
    RESEARCH_TASKS,
    TASK_QUEUES,
    TASKS_EXCHANGE,
    TOPOLOGY,
    Topology,
)

__all__ = ["TASK_ROUTES", "task_queues"]

#: Task-name globs and the queue each goes to.
TASK_ROUTES: dict[str, dict[str, Any]] = {
    "research.*": {"queue": RESEARCH_TASKS},
    "cad.*": {"queue": CAD_TASKS},
    "brain.*": {"queue": BRAIN_COMMANDS},
}


def task_queues(topology: Topology = TOPOLOGY) -> tuple[Queue, ...]:
    """Kombu queues for every task queue, with exactly the topology's arguments."""
    exchange = Exchange(TASKS_EXCHANGE, type="direct", durable=True)
    queues = []
    for name in TASK_QUEUES:
        spec = topology.queue(name)
        queues.append(
            Queue(
                name,
                exchange,
                routing_key=name,
                durable=True,
                queue_arguments=dict(spec.arguments),
                # None for a quorum queue: Kombu would add an x-max-priority it refuses.
                max_priority=spec.arguments.get("x-max-priority"),
            )
        )
    return tuple(queues)
