"""Pytest plugin (``-p tests.celery_upstream.plugin``) for Celery's own integration suite.

Celery's suite builds its app from the ``celery_parameters`` and ``celery_config``
fixtures of its conftest; this plugin adds the platform's task class, consumer
and delivery settings to both, so every task of the suite is a ``KittyTask``
served by a ``KittyConsumer``, and marks the cases where the platform differs on purpose.
"""

from __future__ import annotations

from collections.abc import Generator
from typing import Any

import pytest

import celeryconfig
from tests.celery_upstream.suite import DIFFERENCES

#: The platform's app: its task class (a constructor argument of Celery, not a setting).
PARAMETERS: dict[str, Any] = {"task_cls": "kitty_tasks.runtime.task:KittyTask"}
#: The platform's settings (celeryconfig) that change how tasks are delivered and settled.
SETTINGS = (
    "worker_consumer",
    "task_acks_late",
    "task_reject_on_worker_lost",
    "task_acks_on_failure",
    "task_acks_on_timeout",
    "broker_transport_options",
    "worker_prefetch_multiplier",
    "task_serializer",
    "result_serializer",
    "accept_content",
    "result_accept_content",
)


def platform_config() -> dict[str, Any]:
    """The platform's delivery settings, read from ``celeryconfig`` so they cannot drift."""
    return {name: getattr(celeryconfig, name) for name in SETTINGS}


@pytest.hookimpl(hookwrapper=True)
def pytest_fixture_setup(
    fixturedef: pytest.FixtureDef[Any], request: pytest.FixtureRequest
) -> Generator[None, Any, None]:
    """Overlay the platform's parameters and settings on the suite's own fixtures."""
    outcome = yield
    overlay = {"celery_parameters": PARAMETERS, "celery_config": platform_config()}
    extra = overlay.get(fixturedef.argname)
    result = outcome.get_result() if extra is not None else None
    if isinstance(result, dict):
        result.update(extra)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark the cases where the platform deliberately differs from Celery, with the reason."""
    for item in items:
        reason = DIFFERENCES.get(item.nodeid)
        if reason is not None:
            item.add_marker(pytest.mark.xfail(reason=reason, strict=True))


@pytest.fixture(autouse=True)
def _platform_app_in_use(celery_session_app: Any) -> None:
    """Fail loudly if the overlay did not reach the app: the run would prove nothing."""
    from kitty_tasks.runtime.task import KittyTask

    assert issubclass(celery_session_app.Task, KittyTask), celery_session_app.Task
    assert celery_session_app.conf.worker_consumer == celeryconfig.worker_consumer
