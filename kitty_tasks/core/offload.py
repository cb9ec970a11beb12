"""A few threads of a client's own that run its blocking steps for coroutines."""

from __future__ import annotations

import asyncio
import contextvars
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import ParamSpec, TypeVar

__all__ = ["Offload"]

P = ParamSpec("P")
T = TypeVar("T")


class Offload:
    """A bounded thread pool, started on first use, whose calls keep the caller's contextvars.

    A client's own pool rather than the loop's default executor: its size caps how many
    blocking steps run at once (no more than the client can serve in parallel anyway), and
    a slow broker never starves unrelated ``to_thread`` work of the application.
    """

    def __init__(self, name: str, max_threads: int) -> None:
        if max_threads < 1:
            raise ValueError(f"max_threads must be >= 1, got {max_threads}")
        self.name = name
        self.max_threads = max_threads
        self._lock = threading.Lock()
        self._executor: ThreadPoolExecutor | None = None

    def submit(self, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> Future[T]:
        """Run ``fn(*args, **kwargs)`` on a pool thread, in a copy of the current context."""
        with self._lock:
            if self._executor is None:
                self._executor = ThreadPoolExecutor(self.max_threads, thread_name_prefix=self.name)
            executor = self._executor
        # Copied so that context variables (the event in hand, a trace id) cross the hop.
        context = contextvars.copy_context()

        def in_context() -> T:
            return context.run(fn, *args, **kwargs)

        return executor.submit(in_context)

    async def run(self, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> T:
        """Await ``fn(*args, **kwargs)`` run on a pool thread; the event loop stays free."""
        return await asyncio.wrap_future(self.submit(fn, *args, **kwargs))

    def shutdown(self) -> None:
        """Let the threads finish what they hold and end; the next ``submit`` starts new ones."""
        with self._lock:
            executor, self._executor = self._executor, None
        if executor is not None:
            # No wait: shutdown may be called from a coroutine, or from one of these threads.
            executor.shutdown(wait=False)
