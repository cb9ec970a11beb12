"""The rpc:// result backend, minus a broker round trip per task sent."""

from __future__ import annotations

import threading
from typing import Any

from celery import signals
from celery.backends.rpc import RPCBackend

__all__ = ["RPC_BACKEND", "KittyRPCBackend", "result_backend_setting"]

#: Celery's ``result_backend`` value that selects ``KittyRPCBackend``.
RPC_BACKEND = "kitty_tasks.runtime.backend:KittyRPCBackend"


class KittyRPCBackend(RPCBackend):  # type: ignore[misc]
    """Celery's RPC backend; the reply queue is declared without waiting for declare-ok.

    Celery declares the caller's reply queue before every task it sends (the queue
    auto-deletes once its last consumer leaves, so it is declared again each time),
    and waits for the broker's answer: a second round trip per enqueue, 22% of
    ``TaskQueue.submit`` under cProfile. The declare and the task's publish go out on
    the same channel, which the broker processes in order, so the queue exists
    before the task is even routed; a failing declare closes the channel, and the
    publish's confirm wait raises it.
    """

    def on_task_call(self, producer: Any, task_id: str) -> None:
        if _IN_POOL_CHILD.is_set():
            return  # a prefork child: the worker declared the queue already (as Celery).
        try:
            self.binding(producer.channel).declare(nowait=True)
        except producer.connection.connection_errors:
            # Celery's own path: declared through connection.ensure, which reconnects.
            super().on_task_call(producer, task_id)


#: Set in a prefork pool child; Celery's own test for this (``task_join_will_block``) is private.
_IN_POOL_CHILD = threading.Event()


@signals.worker_process_init.connect
def _mark_pool_child(**_: Any) -> None:
    _IN_POOL_CHILD.set()


def result_backend_setting(url: str) -> str:
    """Celery's ``result_backend`` for ``KITTY_RESULT_BACKEND``: ours for rpc://, else as is."""
    return RPC_BACKEND if url.split("://", 1)[0] == "rpc" else url
