"""KITTY_RESULT_BACKEND: an SQLite file by default, rpc:// as ours, bad URLs refused."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from celery import Celery
from celery.backends.database import DatabaseBackend

from kitty_tasks.core.errors import ConfigurationError
from kitty_tasks.core.settings import DEFAULT_RESULT_BACKEND, Settings
from kitty_tasks.runtime.application import app
from kitty_tasks.runtime.backend import RPC_BACKEND, result_backend_setting


def test_the_default_store_is_an_sqlite_file_in_the_working_directory(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("KITTY_RESULT_BACKEND", raising=False)
    monkeypatch.delenv("KITTY_RESULT_EXPIRES", raising=False)
    settings = Settings(_env_file=None)  # type: ignore[call-arg]
    assert (
        settings.result_backend == DEFAULT_RESULT_BACKEND == "db+sqlite:///.kitty-results.sqlite3"
    )
    assert settings.result_expires == 86400


def test_rpc_url_selects_the_kitty_backend_and_others_pass_through() -> None:
    assert result_backend_setting("rpc://") == RPC_BACKEND
    for url in (
        "redis://localhost:6379/0",
        "db+postgresql+psycopg://postgres@127.0.0.1/test",
        "db+sqlite:////var/lib/kitty/results.sqlite3",
    ):
        assert result_backend_setting(url) == url


@pytest.mark.parametrize("url", ["", "results.sqlite3", "db+sqlite://results.sqlite3"])
def test_a_url_celery_cannot_use_is_refused_with_the_forms_that_work(url: str) -> None:
    with pytest.raises(ConfigurationError, match="KITTY_RESULT_BACKEND") as caught:
        result_backend_setting(url)
    assert "db+sqlite:///" in str(caught.value)


def test_the_app_stores_results_in_the_database_and_schedules_their_cleanup() -> None:
    # Given the test run's setting (an SQLite file of its own)
    assert isinstance(app.backend, DatabaseBackend)
    assert app.conf.result_extended is True
    entry = app.conf.beat_schedule["celery.backend_cleanup"]
    assert entry["task"] == "celery.backend_cleanup"
    assert app.conf.result_expires == 86400


def test_the_sqlite_store_is_written_in_wal_mode(tmp_path: Path) -> None:
    # Given an app of the platform's settings on an SQLite file of its own
    store = Celery("wal", task_cls="kitty_tasks.runtime.task:KittyTask")
    store.config_from_object("celeryconfig")
    store.conf.result_backend = f"db+sqlite:///{tmp_path}/results.sqlite3"

    # When a result is stored
    store.backend.store_result("task-1", {"ok": True}, "SUCCESS")

    # Then the file is in WAL mode (readers never block the writer) and the result reads back
    with sqlite3.connect(tmp_path / "results.sqlite3") as connection:
        assert connection.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    assert store.backend.get_task_meta("task-1")["result"] == {"ok": True}
