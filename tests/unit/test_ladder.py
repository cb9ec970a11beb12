"""How a retry copy and a dead letter are addressed: the request's options kept, x-kitty added."""

from __future__ import annotations

from kitty_tasks.core.topology import (
    DLX_EXCHANGE,
    H_ATTEMPT,
    H_ATTEMPTS,
    H_ERROR_TYPE,
    H_FIRST_FAILURE,
    H_ORIGINAL_QUEUE,
    delay_exchange_name,
)
from kitty_tasks.runtime.ladder import (
    PUBLISHING,
    LadderRetry,
    dead_letter_options,
    explicit_expiration,
    ladder_options,
)

#: What Celery's retry hands to apply_async for a task consumed from research.tasks.
CELERY_RETRY_OPTIONS = {
    "task_id": "t-1",
    "retries": 1,
    "countdown": 2,
    "eta": None,
    "queue": "research.tasks",
    "exchange": "kitty.tasks",
    "routing_key": "research.tasks",
    "priority": 7,
    "expires": "2030-01-01T00:00:00+00:00",
    "link_error": [{"task": "errback"}],
    "stamped_headers": ["stamp"],
    "stamp": "s1",
    "headers": {"x-trace": "abc", "x-death": [{"queue": "kitty.delay.5"}]},
}


def _retry(queue: str = "research.tasks") -> LadderRetry:
    return LadderRetry(
        task_id="t-1", queue=queue, limit=3, exc=ValueError("x"), base=1.0, cap=7200.0
    )


def test_a_retry_copy_goes_to_the_bucket_of_its_countdown_with_every_option_kept():
    options, plan = ladder_options(_retry(), CELERY_RETRY_OPTIONS)

    assert (plan.bucket, plan.delay) == (5, 2.0)
    assert options["exchange"].name == delay_exchange_name(5)
    assert options["exchange"].type == "fanout"
    assert options["routing_key"] == "research.tasks"
    assert options["expiration"] == 2.0
    assert not {"queue", "countdown", "eta"} & set(options)
    for kept in ("task_id", "priority", "expires", "link_error", "stamped_headers", "stamp"):
        assert options[kept] == CELERY_RETRY_OPTIONS[kept]


def test_a_retry_copy_adds_the_platform_headers_to_the_requests_own():
    options, _ = ladder_options(_retry(), CELERY_RETRY_OPTIONS)

    headers = options["headers"]
    assert headers["x-trace"] == "abc"
    assert "x-death" not in headers
    assert headers[H_ATTEMPT] == 2
    assert headers[H_ORIGINAL_QUEUE] == "research.tasks"
    assert headers[H_FIRST_FAILURE]


def test_a_retry_without_countdown_waits_the_platforms_backoff_in_another_queue():
    options, plan = ladder_options(_retry("cad.tasks"), {**CELERY_RETRY_OPTIONS, "countdown": None})

    assert 0.5 <= plan.delay <= 1.0  # the first retry: 1 s with equal jitter
    assert options["routing_key"] == "cad.tasks"
    assert options["headers"][H_ORIGINAL_QUEUE] == "cad.tasks"


def test_a_dead_letter_keeps_custom_headers_and_adds_the_reason():
    options = dead_letter_options(
        KeyError("k"), {"x-trace": "abc", "x-death": []}, attempts=4, queue="research.tasks"
    )

    assert options["exchange"].name == DLX_EXCHANGE
    assert options["routing_key"] == "research.tasks"
    assert options["add_to_parent"] is False
    headers = options["headers"]
    assert headers["x-trace"] == "abc"
    assert "x-death" not in headers
    assert (headers[H_ERROR_TYPE], headers[H_ATTEMPTS]) == ("KeyError", 4)


def test_expires_is_left_to_the_worker_but_an_explicit_expiration_is_kept():
    token = PUBLISHING.set((None,))
    try:
        derived = {"expiration": 60.0}
        explicit_expiration(properties=derived, headers={"expires": "2030-01-01T00:00:00"})
        assert derived == {}
    finally:
        PUBLISHING.reset(token)
    token = PUBLISHING.set((0.5,))
    try:
        overridden = {"expiration": 60.0}
        explicit_expiration(properties=overridden, headers={"expires": "2030-01-01T00:00:00"})
        assert overridden == {"expiration": 0.5}
    finally:
        PUBLISHING.reset(token)
    other = {"expiration": 60.0}  # not a KittyTask publish: left alone
    explicit_expiration(properties=other, headers={"expires": "2030-01-01T00:00:00"})
    assert other == {"expiration": 60.0}
