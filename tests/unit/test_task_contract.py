"""Celery's task contract on KittyTask, locally: eager and direct calls make no broker traffic."""

from __future__ import annotations

from typing import Any

import pytest
from celery import Celery
from celery.exceptions import MaxRetriesExceededError

from kitty_tasks.core.errors import InvalidInput, Permanent

#: Nothing listens here: a connection attempt would fail, but the guard fails the test first.
UNREACHABLE = "amqp://guest:guest@127.0.0.1:1//"


class ExpectedError(Exception):
    """The error the test tasks raise."""


@pytest.fixture
def app() -> Celery:
    """An app with the platform's task class and settings, on a broker that is not there."""
    app = Celery("contract", task_cls="kitty_tasks.runtime.task:KittyTask", set_as_current=False)
    app.config_from_object("celeryconfig")
    app.conf.broker_url = UNREACHABLE
    app.conf.result_backend = "cache+memory://"
    app.conf.task_routes = {}
    return app


def test_apply_of_a_failing_task_fails_and_calls_its_errback_locally(
    app: Celery, no_broker: list[str]
):
    seen: list[Any] = []

    @app.task(name="contract.fail", shared=False)  # type: ignore[untyped-decorator]
    def fail(label: str) -> None:
        raise ExpectedError(label)

    @app.task(name="contract.errback", shared=False)  # type: ignore[untyped-decorator]
    def errback(request: Any, exc: BaseException, traceback: Any) -> None:
        seen.append((request.id, exc))

    result = fail.apply(("boom",), link_error=errback.s())

    assert result.state == "FAILURE"
    assert isinstance(result.result, ExpectedError)
    assert seen == [(result.id, result.result)]


def test_direct_call_is_a_plain_function_call(app: Celery, no_broker: list[str]):
    @app.task(name="contract.add", shared=False)  # type: ignore[untyped-decorator]
    def add(x: int, y: int) -> int:
        return x + y

    @app.task(name="contract.fail_direct", shared=False)  # type: ignore[untyped-decorator]
    def fail() -> None:
        raise ExpectedError("direct")

    assert add(2, 3) == 5
    with pytest.raises(TypeError):
        add(5)  # one argument short: Python's own error, not a publish
    with pytest.raises(ExpectedError, match="direct"):
        fail()


def test_eager_retries_run_locally_and_run_out_with_max_retries_exceeded(
    app: Celery, no_broker: list[str]
):
    runs: list[int] = []

    @app.task(name="contract.retry", bind=True, shared=False, max_retries=2)  # type: ignore[untyped-decorator]
    def retrying(self: Any) -> None:
        runs.append(int(self.request.retries))
        raise self.retry(countdown=30)

    result = retrying.apply()

    assert runs == [0, 1, 2]
    assert result.state == "FAILURE"
    assert isinstance(result.result, MaxRetriesExceededError)


def test_task_always_eager_autoretry_stops_at_a_permanent_error(app: Celery, no_broker: list[str]):
    app.conf.task_always_eager = True
    runs: list[int] = []

    @app.task(name="contract.auto", bind=True, shared=False, autoretry_for=(Exception,))  # type: ignore[untyped-decorator]
    def auto(self: Any, permanent: bool) -> str:
        runs.append(int(self.request.retries))
        if permanent:
            raise InvalidInput("never valid")
        if self.request.retries < 2:
            raise ExpectedError("transient")
        return "done"

    assert auto.delay(False).get() == "done"
    assert runs == [0, 1, 2]
    runs.clear()
    with pytest.raises(Permanent):
        auto.delay(True).get()
    assert runs == [0]


def test_a_plain_task_is_not_retried(app: Celery, no_broker: list[str]):
    runs: list[int] = []

    @app.task(name="contract.plain", bind=True, shared=False)  # type: ignore[untyped-decorator]
    def plain(self: Any) -> None:
        runs.append(int(self.request.retries))
        raise ExpectedError("once")

    result = plain.apply()

    assert result.state == "FAILURE"
    assert runs == [0]


def test_max_retries_none_declared_on_a_task_means_no_limit(app: Celery, no_broker: list[str]):
    runs: list[int] = []

    @app.task(name="contract.forever", bind=True, shared=False, max_retries=None)  # type: ignore[untyped-decorator]
    def forever(self: Any) -> int:
        runs.append(int(self.request.retries))
        if self.request.retries < 6:  # past KITTY_MAX_RETRIES (3)
            raise self.retry(countdown=1)
        return len(runs)

    assert forever.apply().get() == 7
