"""FailurePolicy without a broker: retry, last attempt, permanent error, unconfirmed copy."""

from __future__ import annotations

from typing import Any

import amqp
import pytest

from kitty_tasks.core.errors import InvalidInput, Permanent
from kitty_tasks.core.failure import FailurePolicy, Outcome, RetryPlan
from kitty_tasks.core.topology import (
    DLX_EXCHANGE,
    H_ATTEMPT,
    H_ATTEMPTS,
    H_ERROR_MESSAGE,
    H_ERROR_TYPE,
    H_FIRST_FAILURE,
    H_LAST_FAILURE,
    H_ORIGINAL_QUEUE,
    H_TRACEBACK,
    delay_exchange_name,
)
from tests.unit.amqp_stubs import UNCONFIRMED, StubChannel, StubPublish, delivery

QUEUE = "billing.orders.events"
BODY = b'{"order": 7}'


def failed(message: str = "printer offline") -> RuntimeError:
    """An error with a traceback, as a handler's would have."""
    try:
        raise RuntimeError(message)
    except RuntimeError as err:
        return err


def handle(
    policy: FailurePolicy,
    attempt: int | None = None,
    exc: Exception | None = None,
    *,
    retryable: bool = True,
) -> tuple[Outcome, RetryPlan | None]:
    """``policy``'s decision on a failed delivery on its ``attempt`` (no header: the first)."""
    headers: dict[str, Any] = {"trace-id": "t-1", "x-death": [{"queue": QUEUE, "count": 1}]}
    if attempt is not None:
        headers[H_ATTEMPT] = attempt
    message = delivery(
        BODY, channel=StubChannel(), headers=headers, message_id="m-1", correlation_id="c-1"
    )
    return policy.handle(message, exc or failed(), queue=QUEUE, retryable=retryable)


def test_a_first_failure_is_retried_through_the_ladder_back_to_its_queue() -> None:
    # Given a policy allowing 3 retries
    publish = StubPublish()
    policy = FailurePolicy(publish, max_retries=3, backoff_base=1.0)
    # When a first delivery fails
    outcome, plan = handle(policy)
    # Then a copy waits in the 1 s bucket, routed back to its own queue, as attempt 2
    assert outcome is Outcome.RETRIED
    assert outcome.ack
    copy = publish.copy
    assert copy.exchange == delay_exchange_name(1) == "kitty.delay.1s"
    assert copy.routing_key == QUEUE
    assert copy.body == BODY
    headers = copy.properties["application_headers"]
    assert headers[H_ATTEMPT] == 2
    assert headers[H_ORIGINAL_QUEUE] == QUEUE
    assert headers[H_FIRST_FAILURE]
    # with the original's own headers and properties, but not the broker's x-death
    assert headers["trace-id"] == "t-1"
    assert "x-death" not in headers
    assert copy.properties["message_id"] == "m-1"
    assert copy.properties["correlation_id"] == "c-1"
    # and the jittered delay (0.5-1 s) as its per-message TTL
    assert plan is not None
    assert 500 <= int(copy.properties["expiration"]) <= 1000


def test_later_retries_wait_longer() -> None:
    publish = StubPublish()
    policy = FailurePolicy(publish, max_retries=3, backoff_base=1.0)
    handle(policy, attempt=2)
    assert publish.copy.exchange == "kitty.delay.5s"
    assert publish.copy.properties["application_headers"][H_ATTEMPT] == 3


def test_the_last_attempt_is_dead_lettered_with_the_reason() -> None:
    # Given a delivery on its 4th attempt, 3 retries allowed
    publish = StubPublish()
    policy = FailurePolicy(publish, max_retries=3)
    # When it fails again
    outcome, plan = handle(policy, attempt=4, exc=failed("still offline"))
    # Then a copy goes to dlx with key = the queue (so into <queue>.dlq), with why it died
    assert (outcome, plan) == (Outcome.DEAD_LETTERED, None)
    assert outcome.ack
    copy = publish.copy
    assert (copy.exchange, copy.routing_key, copy.body) == (DLX_EXCHANGE, QUEUE, BODY)
    headers = copy.properties["application_headers"]
    assert headers[H_ERROR_TYPE] == "RuntimeError"
    assert headers[H_ERROR_MESSAGE] == "still offline"
    assert "RuntimeError: still offline" in headers[H_TRACEBACK]
    assert headers[H_ATTEMPTS] == 4
    assert headers[H_ORIGINAL_QUEUE] == QUEUE
    assert headers[H_FIRST_FAILURE] <= headers[H_LAST_FAILURE]
    assert "x-death" not in headers
    assert "expiration" not in copy.properties


@pytest.mark.parametrize("exc", [Permanent("bad order"), InvalidInput("no such order")])
def test_permanent_errors_are_dead_lettered_at_once(exc: Exception) -> None:
    publish = StubPublish()
    outcome, _ = handle(FailurePolicy(publish, max_retries=3), exc=exc)
    assert outcome is Outcome.DEAD_LETTERED
    assert publish.copy.exchange == DLX_EXCHANGE
    assert publish.copy.properties["application_headers"][H_ATTEMPTS] == 1
    assert publish.copy.properties["application_headers"][H_ERROR_TYPE] == type(exc).__name__


def test_a_caller_can_say_an_error_is_not_retryable() -> None:
    publish = StubPublish()
    outcome, _ = handle(FailurePolicy(publish, max_retries=3), retryable=False)
    assert outcome is Outcome.DEAD_LETTERED
    assert publish.copy.exchange == DLX_EXCHANGE


@pytest.mark.parametrize("attempt", [1, 4])
def test_an_unconfirmed_copy_rejects_the_original_so_the_broker_dead_letters_it(
    attempt: int,
) -> None:
    # Given a broker that does not confirm the copy (retry or dead letter)
    publish = StubPublish(fail_with=UNCONFIRMED)
    policy = FailurePolicy(publish, max_retries=3)
    # When a delivery fails
    outcome, _ = handle(policy, attempt=attempt)
    # Then the original must be rejected without requeue, not acked away uncopied
    assert outcome is Outcome.REJECTED
    assert not outcome.ack
    assert publish.copies == []


def test_a_py_amqp_delivery_is_copied_too() -> None:
    # py-amqp keeps the headers among the properties (Kombu's Message also apart)
    message = amqp.Message(
        BODY, application_headers={H_ATTEMPT: 1}, message_id="m-2", content_type="text/plain"
    )
    publish = StubPublish()
    outcome, _ = FailurePolicy(publish, max_retries=1).handle(message, failed(), queue=QUEUE)
    assert outcome is Outcome.RETRIED
    assert publish.copy.properties["application_headers"][H_ATTEMPT] == 2
    assert publish.copy.properties["message_id"] == "m-2"
    assert publish.copy.properties["content_type"] == "text/plain"
