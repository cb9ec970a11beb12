"""A worker at INFO logs no line per task unless KITTY_LOG_TASKS asks for them."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest

from kitty_tasks.core.settings import get_settings
from kitty_tasks.runtime.worker import TASK_LOGGERS, quiet_task_logs


@pytest.fixture(autouse=True)
def task_loggers() -> Iterator[list[logging.Logger]]:
    """Celery's per-task loggers, their levels put back afterwards."""
    loggers = [logging.getLogger(name) for name in TASK_LOGGERS]
    levels = [logger.level for logger in (*loggers, logging.getLogger())]
    for logger in loggers:
        logger.setLevel(logging.NOTSET)
    yield loggers
    for logger, level in zip((*loggers, logging.getLogger()), levels, strict=True):
        logger.setLevel(level)
    get_settings.cache_clear()


def test_by_default_the_received_and_succeeded_lines_are_off_but_errors_stay(
    task_loggers: list[logging.Logger], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("KITTY_LOG_TASKS", raising=False)
    get_settings.cache_clear()
    logging.getLogger().setLevel(logging.INFO)

    quiet_task_logs()

    # Celery asks isEnabledFor(INFO) once per strategy and tracer: both now say no
    assert not any(logger.isEnabledFor(logging.INFO) for logger in task_loggers)
    assert all(logger.isEnabledFor(logging.ERROR) for logger in task_loggers)


def test_kitty_log_tasks_keeps_celerys_lines(
    task_loggers: list[logging.Logger], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KITTY_LOG_TASKS", "true")
    get_settings.cache_clear()
    logging.getLogger().setLevel(logging.INFO)

    quiet_task_logs()

    assert all(logger.isEnabledFor(logging.INFO) for logger in task_loggers)
