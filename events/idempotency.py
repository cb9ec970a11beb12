"""Skip events a handler already handled: ``idempotent`` and its stores (SQLite, memory)."""

from __future__ import annotations

import functools
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol, overload, runtime_checkable

from events.envelope import Event
from events.subscriptions import EventHandler
from kitty_tasks.core.settings import get_settings

__all__ = ["IdempotencyStore", "MemoryStore", "SQLiteStore", "idempotent"]

logger = logging.getLogger(__name__)

LOG_DUPLICATE = "event %s (%s) already handled by %s; skipped"

#: Locks striped by key: one handler never runs twice at once for an event in this process.
_STRIPES = 64


@runtime_checkable
class IdempotencyStore(Protocol):
    """Remembers which (handler key, event id) pairs were handled successfully."""

    def seen(self, key: str, event_id: str) -> bool:
        """True if ``event_id`` was handled under ``key``."""
        ...

    def mark(self, key: str, event_id: str) -> None:
        """Record that ``event_id`` was handled under ``key``."""
        ...


class MemoryStore:
    """In-process store for tests and throwaway consumers; forgets everything on exit."""

    def __init__(self) -> None:
        self._seen: set[tuple[str, str]] = set()
        self._lock = threading.Lock()

    def seen(self, key: str, event_id: str) -> bool:
        """True if ``event_id`` was handled under ``key``."""
        with self._lock:
            return (key, event_id) in self._seen

    def mark(self, key: str, event_id: str) -> None:
        """Record that ``event_id`` was handled under ``key``."""
        with self._lock:
            self._seen.add((key, event_id))

    def __len__(self) -> int:
        with self._lock:
            return len(self._seen)


class SQLiteStore:
    """Store in a SQLite file: survives restarts and is shared by processes on one host."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        # One connection shared by threads under a lock; WAL lets other processes read meanwhile.
        self._db = sqlite3.connect(self.path, check_same_thread=False, timeout=30.0)
        with self._lock, self._db:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute(
                "CREATE TABLE IF NOT EXISTS handled ("
                " handler TEXT NOT NULL, event_id TEXT NOT NULL, handled_at REAL NOT NULL,"
                " PRIMARY KEY (handler, event_id))"
            )

    def seen(self, key: str, event_id: str) -> bool:
        """True if ``event_id`` was handled under ``key``."""
        with self._lock:
            row = self._db.execute(
                "SELECT 1 FROM handled WHERE handler = ? AND event_id = ?", (key, event_id)
            ).fetchone()
        return row is not None

    def mark(self, key: str, event_id: str) -> None:
        """Record that ``event_id`` was handled under ``key``."""
        with self._lock, self._db:
            self._db.execute(
                "INSERT OR IGNORE INTO handled (handler, event_id, handled_at) VALUES (?, ?, ?)",
                (key, event_id, time.time()),
            )

    def prune(self, older_than: float) -> int:
        """Forget entries older than ``older_than`` seconds; returns how many."""
        with self._lock, self._db:
            cursor = self._db.execute(
                "DELETE FROM handled WHERE handled_at < ?", (time.time() - older_than,)
            )
        return cursor.rowcount

    def close(self) -> None:
        """Close the database file."""
        with self._lock:
            self._db.close()


_default_store: SQLiteStore | None = None
_default_lock = threading.Lock()


def default_store() -> SQLiteStore:
    """The SQLite store at ``KITTY_IDEMPOTENCY_DB``, opened on first use."""
    global _default_store  # noqa: PLW0603 - one file per process, opened lazily
    with _default_lock:
        if _default_store is None:
            _default_store = SQLiteStore(get_settings().idempotency_db)
        return _default_store


def _handler_key(handler: Callable[..., Any]) -> str:
    module = getattr(handler, "__module__", None) or "?"
    name = getattr(handler, "__qualname__", None) or type(handler).__qualname__
    return f"{module}.{name}"


def _wrap(handler: EventHandler, store: IdempotencyStore | None, key: str | None) -> EventHandler:
    if not callable(handler):
        raise TypeError(f"idempotent() needs a callable handler, got {handler!r}")
    if store is not None and not isinstance(store, IdempotencyStore):
        raise TypeError(f"store must have seen() and mark(), got {store!r}")
    handler_key = key or _handler_key(handler)
    stripes = [threading.Lock() for _ in range(_STRIPES)]

    @functools.wraps(handler)
    def wrapper(event: Event) -> Any:
        chosen = store if store is not None else default_store()
        with stripes[hash(event.event_id) % _STRIPES]:
            if chosen.seen(handler_key, event.event_id):
                logger.info(LOG_DUPLICATE, event.event_id, event.event_type, handler_key)
                return None
            result = handler(event)
            # Written only now: a handler that raised will run again on the retry.
            chosen.mark(handler_key, event.event_id)
            return result

    wrapper.idempotency_key = handler_key  # type: ignore[attr-defined]
    return wrapper


@overload
def idempotent(
    handler: EventHandler, *, store: IdempotencyStore | None = ..., key: str | None = ...
) -> EventHandler: ...


@overload
def idempotent(
    handler: None = None, *, store: IdempotencyStore | None = ..., key: str | None = ...
) -> Callable[[EventHandler], EventHandler]: ...


def idempotent(
    handler: EventHandler | None = None,
    *,
    store: IdempotencyStore | None = None,
    key: str | None = None,
) -> EventHandler | Callable[[EventHandler], EventHandler]:
    """Run ``handler`` at most once per ``event_id`` (per handler ``key``, default its name).

    Use as ``@idempotent``, ``@idempotent(store=MemoryStore())`` or
    ``idempotent(handler, store=...)``. The default store is the SQLite file at
    ``KITTY_IDEMPOTENCY_DB``. The entry is written only after the handler
    returns, so a failed attempt is retried; two processes handling the same
    event at the same moment can both run it (the store is not a lock).
    """
    if handler is not None:
        return _wrap(handler, store, key)

    def decorate(fn: EventHandler) -> EventHandler:
        return _wrap(fn, store, key)

    return decorate
