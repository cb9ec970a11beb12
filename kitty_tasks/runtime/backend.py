"""Result backends: rpc:// minus a round trip per task sent; SQLite tuned for workers."""

from __future__ import annotations

import threading
from typing import Any

from celery import signals
from celery.backends.rpc import RPCBackend
from sqlalchemy import event
from sqlalchemy.engine import Engine

from kitty_tasks.core.errors import ConfigurationError

__all__ = ["RPC_BACKEND", "KittyRPCBackend", "result_backend_setting", "tune_sqlite"]

#: How long an SQLite writer waits for another's lock before "database is locked", ms.
SQLITE_BUSY_TIMEOUT_MS = 30_000

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
    scheme, separator, rest = url.partition("://")
    if not scheme or not separator:
        raise ConfigurationError(
            f"KITTY_RESULT_BACKEND={url!r} is not a URL; use db+sqlite:///<file>, "
            "db+postgresql+psycopg://user@host/db, redis://host:6379/0 or rpc://"
        )
    if scheme == "db+sqlite" and not rest.startswith("/"):
        raise ConfigurationError(
            f"KITTY_RESULT_BACKEND={url!r}: an SQLite URL has three slashes and a file, "
            "db+sqlite:///relative.sqlite3 or db+sqlite:////absolute/path.sqlite3"
        )
    return RPC_BACKEND if scheme == "rpc" else url


def tune_sqlite(engine: Engine) -> None:
    """Celery's ``database_engine_callback``: WAL and a busy timeout for SQLite files."""
    if engine.dialect.name != "sqlite":
        return

    # WAL lets readers (any process polling a result) run beside the one writer, and
    # the busy timeout makes concurrent prefork children wait for the write lock
    # instead of failing at once with "database is locked".
    @event.listens_for(engine, "connect")
    def _pragmas(dbapi_connection: Any, _record: Any) -> None:
        cursor = dbapi_connection.cursor()
        cursor.execute(f"PRAGMA busy_timeout = {SQLITE_BUSY_TIMEOUT_MS}")
        cursor.execute("PRAGMA journal_mode = WAL")
        cursor.execute("PRAGMA synchronous = NORMAL")
        cursor.close()
