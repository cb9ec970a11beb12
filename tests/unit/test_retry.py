"""The retry ladder's backoff policy."""

from __future__ import annotations

import random

import pytest

from kitty_tasks.core.failure import backoff_delay, plan_retry


def test_backoff_grows_exponentially_and_is_capped():
    assert [backoff_delay(n) for n in range(4)] == [1.0, 4.0, 16.0, 64.0]
    assert backoff_delay(50, cap=7200) == 7200


def test_backoff_refuses_negative_retries():
    with pytest.raises(ValueError, match="retries"):
        backoff_delay(-1)


def test_plan_puts_jittered_delay_inside_its_bucket():
    rng = random.Random(7)
    for retries in range(8):
        plan = plan_retry(retries, rng=rng)
        full = backoff_delay(retries)
        assert full / 2 <= plan.delay <= min(full, plan.bucket)
        assert plan.bucket >= min(full, 7200)


def test_jitter_spreads_a_burst_of_retries():
    rng = random.Random(1)
    delays = {round(plan_retry(2, rng=rng).delay, 3) for _ in range(50)}
    assert len(delays) > 40
