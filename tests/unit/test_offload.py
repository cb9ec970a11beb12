"""The offload pool that runs a client's blocking steps for coroutines."""

from __future__ import annotations

import asyncio
import contextvars
import threading

import pytest

from kitty_tasks.core.offload import Offload

request_id: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="none")


def test_a_call_runs_on_a_pool_thread_with_the_callers_context() -> None:
    offload = Offload("probe", 2)

    async def in_request() -> tuple[str, str]:
        request_id.set("r-42")
        return await offload.run(lambda: (request_id.get(), threading.current_thread().name))

    seen_id, thread = asyncio.run(in_request())
    offload.shutdown()
    assert seen_id == "r-42"
    assert thread.startswith("probe")


def test_many_calls_share_at_most_max_threads() -> None:
    offload = Offload("bounded", 3)

    async def fifty() -> set[str]:
        names = await asyncio.gather(
            *(offload.run(lambda: threading.current_thread().name) for _ in range(50))
        )
        return set(names)

    assert len(asyncio.run(fifty())) <= 3
    offload.shutdown()


def test_errors_reach_the_awaiting_coroutine_and_the_pool_restarts_after_shutdown() -> None:
    offload = Offload("errors", 1)

    def fail() -> None:
        raise KeyError("missing")

    with pytest.raises(KeyError, match="missing"):
        asyncio.run(offload.run(fail))
    offload.shutdown()
    assert asyncio.run(offload.run(lambda: 7)) == 7
    offload.shutdown()


def test_a_pool_needs_a_thread() -> None:
    with pytest.raises(ValueError, match="max_threads must be >= 1"):
        Offload("none", 0)
