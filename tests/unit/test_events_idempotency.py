"""idempotent(): a handler runs once per event id; the entry is written only on success."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from events import Event, MemoryStore, SQLiteStore, idempotent


def make_event(event_id: str = "ev-1") -> Event:
    return Event(event_id=event_id, event_type="fabrication.print.started", data={"job_id": "j"})


@pytest.fixture(params=["memory", "sqlite"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> MemoryStore | SQLiteStore:
    if request.param == "memory":
        return MemoryStore()
    return SQLiteStore(tmp_path / "idem.sqlite3")


def test_a_duplicate_is_skipped(store: MemoryStore | SQLiteStore) -> None:
    calls: list[str] = []

    @idempotent(store=store)
    def handle(event: Event) -> str:
        calls.append(event.event_id)
        return "done"

    assert handle(make_event()) == "done"
    assert handle(make_event()) is None
    assert handle(make_event("ev-2")) == "done"
    assert calls == ["ev-1", "ev-2"]


def test_a_failed_run_is_not_recorded_so_the_retry_runs(store: MemoryStore | SQLiteStore) -> None:
    calls: list[int] = []

    @idempotent(store=store)
    def handle(event: Event) -> None:
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("first attempt fails")

    with pytest.raises(RuntimeError):
        handle(make_event())
    handle(make_event())
    handle(make_event())
    assert len(calls) == 2


def test_handlers_sharing_a_store_are_kept_apart(store: MemoryStore | SQLiteStore) -> None:
    seen: list[str] = []

    @idempotent(store=store)
    def audit(event: Event) -> None:
        seen.append("audit")

    @idempotent(store=store)
    def notify(event: Event) -> None:
        seen.append("notify")

    audit(make_event())
    notify(make_event())
    assert seen == ["audit", "notify"]


def test_wrapper_form_and_explicit_key(store: MemoryStore | SQLiteStore) -> None:
    seen: list[str] = []
    first = idempotent(lambda e: seen.append("first"), store=store, key="billing")
    second = idempotent(lambda e: seen.append("second"), store=store, key="billing")
    first(make_event())
    second(make_event())
    assert seen == ["first"]


def test_sqlite_store_survives_reopening(tmp_path: Path) -> None:
    path = tmp_path / "nested" / "idem.sqlite3"
    store = SQLiteStore(path)
    store.mark("handler", "ev-1")
    store.close()
    reopened = SQLiteStore(path)
    assert reopened.seen("handler", "ev-1")
    assert not reopened.seen("handler", "ev-2")
    assert not reopened.seen("other", "ev-1")


def test_sqlite_store_prunes_old_entries(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "idem.sqlite3")
    store.mark("h", "old")
    assert store.prune(older_than=-1) == 1
    assert not store.seen("h", "old")


def test_default_store_is_the_sqlite_file_of_the_settings(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import events.idempotency as module
    from kitty_tasks.core.settings import get_settings

    monkeypatch.setenv("KITTY_IDEMPOTENCY_DB", str(tmp_path / "default.sqlite3"))
    get_settings.cache_clear()
    monkeypatch.setattr(module, "_default_store", None)
    try:
        calls: list[int] = []
        handle = idempotent(lambda e: calls.append(1))
        handle(make_event())
        handle(make_event())
        assert calls == [1]
        assert (tmp_path / "default.sqlite3").exists()
        assert SQLiteStore(tmp_path / "default.sqlite3").seen(handle.idempotency_key, "ev-1")  # type: ignore[attr-defined]
    finally:
        get_settings.cache_clear()


def test_concurrent_duplicates_in_one_process_run_once(store: MemoryStore | SQLiteStore) -> None:
    calls: list[int] = []
    gate = threading.Barrier(8)

    @idempotent(store=store)
    def handle(event: Event) -> None:
        calls.append(1)

    def deliver() -> None:
        gate.wait()
        handle(make_event())

    threads = [threading.Thread(target=deliver) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert calls == [1]


def test_a_store_without_the_protocol_is_refused() -> None:
    with pytest.raises(TypeError, match="seen\\(\\) and mark\\(\\)"):
        idempotent(store=object())(lambda e: None)  # type: ignore[call-overload]
