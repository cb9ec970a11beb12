"""The worker refuses task time limits the broker's consumer_timeout would cut short."""

from __future__ import annotations

import pytest
from celery import Celery

from kitty_tasks.core.errors import ConfigurationError
from kitty_tasks.runtime.worker import check_time_limit


def make_app(time_limit: float | None) -> Celery:
    """An app with ``task_time_limit`` and one task without a limit of its own."""
    app = Celery("time-limit-test", set_as_current=False)
    app.conf.task_time_limit = time_limit

    @app.task(name="t.plain", shared=False)  # type: ignore[untyped-decorator]
    def plain() -> None:
        return None

    return app


def test_time_limit_at_or_over_consumer_timeout_is_refused_with_both_values() -> None:
    # Given a 120 s task time limit and a broker consumer_timeout of 60 s
    app = make_app(120)
    # When the worker checks its settings, Then it refuses, naming both numbers and the fix
    with pytest.raises(ConfigurationError, match=r"120s .* 60000 ms") as caught:
        check_time_limit(app, consumer_timeout_ms=60_000)
    assert "KITTY_TASK_TIME_LIMIT" in str(caught.value)


def test_a_task_own_time_limit_counts_too() -> None:
    # Given no global limit but one task allowed 90 s
    app = make_app(None)

    @app.task(name="t.long", time_limit=90, shared=False)  # type: ignore[untyped-decorator]
    def long() -> None:
        return None

    # Then a 60 s consumer_timeout is refused, naming the task
    with pytest.raises(ConfigurationError, match=r"t\.long"):
        check_time_limit(app, consumer_timeout_ms=60_000)


@pytest.mark.parametrize(("limit", "timeout_ms"), [(30, 60_000), (None, 60_000), (7200, 0)])
def test_limits_below_the_timeout_or_a_disabled_timeout_pass(
    limit: float | None, timeout_ms: int
) -> None:
    # Given a limit under the timeout, no limit (warned), or consumer_timeout disabled
    # Then the worker starts
    check_time_limit(make_app(limit), consumer_timeout_ms=timeout_ms)
