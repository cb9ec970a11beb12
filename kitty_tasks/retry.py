"""The retry ladder's policy: how long a failed message waits, in which bucket."""

from __future__ import annotations

import random
from dataclasses import dataclass

from kitty_tasks.topology import DEFAULT_RETRY_BUCKETS, pick_bucket

__all__ = ["RetryPlan", "backoff_delay", "plan_retry"]


@dataclass(frozen=True)
class RetryPlan:
    """Where a retry waits: the bucket (seconds) and the jittered delay inside it."""

    bucket: int
    delay: float


def backoff_delay(
    retries: int, *, base: float = 1.0, cap: float = 7200.0, factor: float = 4.0
) -> float:
    """Exponential backoff before retry number ``retries + 1``, capped, without jitter."""
    if retries < 0:
        raise ValueError(f"retries must be >= 0, got {retries}")
    return float(min(cap, base * factor**retries))


def plan_retry(
    retries: int,
    *,
    base: float = 1.0,
    cap: float = 7200.0,
    buckets: tuple[int, ...] = DEFAULT_RETRY_BUCKETS,
    rng: random.Random | None = None,
) -> RetryPlan:
    """Plan retry number ``retries + 1``: equal jitter over the backoff, then its bucket.

    The message carries the jittered delay as its AMQP expiration, so retries of
    one burst spread out; the bucket's TTL bounds the wait from above.
    """
    full = backoff_delay(retries, base=base, cap=cap)
    jittered = full / 2 + (rng or random).uniform(0, full / 2)
    bucket = pick_bucket(full, buckets)
    return RetryPlan(bucket=bucket, delay=min(jittered, float(bucket)))
