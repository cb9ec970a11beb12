"""Reading task results from the result store, blocking or awaited, in any process."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from celery import states
from celery.exceptions import TimeoutError as CeleryTimeoutError
from celery.result import AsyncResult

from kitty_tasks.core.errors import TaskFailed

__all__ = ["outcome", "result_of", "wait_for_result"]

#: First and longest pause between two reads of the store while a task is not done, seconds.
FIRST_POLL_INTERVAL = 0.05
MAX_POLL_INTERVAL = 0.5


def outcome(task_id: str, meta: dict[str, Any]) -> Any:
    """The task's return value from a finished task's ``meta``, or ``TaskFailed``."""
    status = meta.get("status")
    if status == states.SUCCESS:
        return meta.get("result")
    error = meta.get("result")
    retries = meta.get("retries")
    raise TaskFailed(
        task_id,
        state=str(status),
        error_type=type(error).__name__ if isinstance(error, BaseException) else "Error",
        error_message=str(error),
        attempts=int(retries) + 1 if isinstance(retries, int) else None,
    )


def _pending_error(task_id: str, timeout: float | None) -> TimeoutError:
    return TimeoutError(
        f"task {task_id} has no result after {timeout:g}s (still queued, retrying or running, "
        "or no task has this id)"
    )


def result_of(result: AsyncResult, timeout: float | None = None) -> Any:
    """Wait for ``result`` (``None``: for ever); its value, ``TaskFailed`` or ``TimeoutError``."""
    try:
        result.get(timeout=timeout, propagate=False)
    except CeleryTimeoutError:
        raise _pending_error(result.id, timeout) from None
    return outcome(result.id, result.backend.get_task_meta(result.id))


async def wait_for_result(result: AsyncResult, timeout: float | None = None) -> Any:
    """Await ``result`` without blocking the loop: ``result_of``'s answers, polled.

    Each read of the store runs in a thread of the loop's default executor, one at a
    time; between reads the coroutine sleeps (50 ms doubling to 500 ms). Cancelling
    it stops the polling: at most the one read in flight finishes in its thread.
    """
    deadline = None if timeout is None else time.monotonic() + timeout
    interval = FIRST_POLL_INTERVAL
    while True:
        meta = await asyncio.to_thread(result.backend.get_task_meta, result.id)
        if meta.get("status") in states.READY_STATES:
            return outcome(result.id, meta)
        if deadline is not None:
            left = deadline - time.monotonic()
            if left <= 0:
                raise _pending_error(result.id, timeout)
            interval = min(interval, left)
        await asyncio.sleep(interval)
        interval = min(interval * 2, MAX_POLL_INTERVAL)
