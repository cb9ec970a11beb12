"""The one failure policy: retry through the delay ladder, or dead-letter with the reason.

Celery tasks, event subscribers and RPC servers all decide with ``plan_failure`` and
describe a death with ``failure_headers``. Subscribers and servers, which hold the raw
delivery, hand it to ``FailurePolicy``: it publishes a confirmed copy (to a
``kitty.delay.*`` exchange, or to ``dlx``) and says how to settle the original. When
the copy cannot be confirmed the original is rejected without requeue, so the broker
dead-letters it with ``x-death``: a failed message is never acked away uncopied, and
never loops.
"""

from __future__ import annotations

import logging
import random
import traceback
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from enum import Enum
from typing import Any

from kitty_tasks.core.errors import Permanent, PublishError
from kitty_tasks.core.publisher import OutgoingMessage
from kitty_tasks.core.topology import (
    BROKER_DEATH_HEADERS,
    DEFAULT_RETRY_BUCKETS,
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
    pick_bucket,
)

__all__ = [
    "MESSAGE_LIMIT",
    "TRACEBACK_LIMIT",
    "FailurePolicy",
    "Outcome",
    "Publish",
    "RetryPlan",
    "attempt_of",
    "backoff_delay",
    "dead_letter_headers",
    "failure_headers",
    "plan_failure",
    "plan_retry",
    "retry_headers",
    "utc_now",
]

logger = logging.getLogger(__name__)

#: Tracebacks are trimmed to their last this-many characters in a dead letter's headers.
TRACEBACK_LIMIT = 4000
#: Error messages are trimmed so that headers stay small.
MESSAGE_LIMIT = 1000
#: AMQP properties a retried or dead-lettered copy keeps from the original delivery. Not
#: ``user_id``: the broker checks it against the copying connection's user and would refuse
#: a copy made on another user's behalf.
COPIED_PROPERTIES = (
    "content_type",
    "content_encoding",
    "delivery_mode",
    "priority",
    "correlation_id",
    "reply_to",
    "message_id",
    "timestamp",
    "type",
    "app_id",
)

LOG_COPY_FAILED = "%s from %s: the %s copy was not confirmed (%s); rejecting it to its DLQ"

#: Publishes copies and waits for their confirms, raising ``PublishError`` when it cannot.
Publish = Callable[[Sequence[OutgoingMessage]], object]


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


def plan_failure(
    exc: BaseException,
    *,
    retries: int,
    max_retries: int,
    retryable: bool = True,
    delay: float | None = None,
    base: float = 1.0,
    cap: float = 7200.0,
) -> RetryPlan | None:
    """The retry for a failure after ``retries`` earlier retries, or None to dead-letter it.

    ``Permanent`` errors and non-``retryable`` ones dead-letter at once; ``delay``
    (a caller's countdown) replaces the backoff.
    """
    if not retryable or isinstance(exc, Permanent) or retries >= max_retries:
        return None
    if delay is not None:
        return RetryPlan(bucket=pick_bucket(delay), delay=max(0.0, delay))
    return plan_retry(retries, base=base, cap=cap)


def utc_now() -> str:
    """The current UTC time, ISO 8601."""
    return datetime.now(timezone.utc).isoformat()


def retry_headers(headers: Mapping[str, Any], *, queue: str, attempt: int) -> dict[str, Any]:
    """A retry copy's headers: all of the original's, less the broker's, plus the attempt."""
    carried = {k: v for k, v in headers.items() if k not in BROKER_DEATH_HEADERS}
    carried[H_ATTEMPT] = attempt
    carried[H_FIRST_FAILURE] = headers.get(H_FIRST_FAILURE) or utc_now()
    carried[H_ORIGINAL_QUEUE] = queue
    return carried


def failure_headers(
    exc: BaseException, *, attempts: int, first_failure: str | None, queue: str
) -> dict[str, Any]:
    """The ``x-kitty-*`` headers that say why a message died after ``attempts`` attempts."""
    trace = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    return {
        H_ERROR_TYPE: type(exc).__name__,
        H_ERROR_MESSAGE: str(exc)[:MESSAGE_LIMIT],
        H_TRACEBACK: trace[-TRACEBACK_LIMIT:],
        H_ATTEMPTS: attempts,
        H_FIRST_FAILURE: first_failure or utc_now(),
        H_LAST_FAILURE: utc_now(),
        H_ORIGINAL_QUEUE: queue,
    }


def dead_letter_headers(
    headers: Mapping[str, Any], exc: BaseException, *, attempts: int, queue: str
) -> dict[str, Any]:
    """A dead letter's headers: all of the original's, less the broker's, plus why it died."""
    carried = {k: v for k, v in headers.items() if k not in BROKER_DEATH_HEADERS}
    carried.update(
        failure_headers(
            exc, attempts=attempts, first_failure=headers.get(H_FIRST_FAILURE), queue=queue
        )
    )
    return carried


class Outcome(str, Enum):
    """What became of a failed delivery, and so how the consumer settles the original."""

    RETRIED = "retried"  #: a confirmed copy waits in the ladder: ack the original
    DEAD_LETTERED = "dead_lettered"  #: a confirmed copy is in the DLQ: ack the original
    REJECTED = "rejected"  #: no copy: reject the original (no requeue) to its DLQ

    @property
    def ack(self) -> bool:
        """True when the original may be acked; else it must be rejected without requeue."""
        return self is not Outcome.REJECTED


@dataclass(frozen=True)
class FailurePolicy:
    """Retries or dead-letters failed raw deliveries (events, RPC requests) by confirmed copies.

    Args:
        publish: sends copies and waits for their confirms.
        max_retries: retries after the first attempt (``KITTY_MAX_RETRIES``).
        backoff_base: the first retry's delay, in seconds.
        backoff_max: the ceiling of a retry's delay, in seconds.
    """

    publish: Publish
    max_retries: int
    backoff_base: float = 1.0
    backoff_max: float = 7200.0

    def handle(
        self,
        message: Any,
        exc: BaseException,
        *,
        queue: str,
        retryable: bool = True,
    ) -> tuple[Outcome, RetryPlan | None]:
        """Copy ``message`` (a Kombu or py-amqp delivery) to the ladder or to ``dlx``.

        Returns the outcome (which says how to settle the original) and the retry plan,
        if any. ``queue`` is the queue the message was consumed from: a retry comes back
        to it alone and a dead letter lands in its ``.dlq``.
        """
        headers = dict(_properties(message).get("application_headers") or {})
        attempt = attempt_of(headers)
        plan = plan_failure(
            exc,
            retries=attempt - 1,
            max_retries=self.max_retries,
            retryable=retryable,
            base=self.backoff_base,
            cap=self.backoff_max,
        )
        if plan is not None:
            properties = _copy_properties(
                message, retry_headers(headers, queue=queue, attempt=attempt + 1)
            )
            # The jittered delay as per-message TTL; the bucket's own TTL bounds it.
            properties["expiration"] = str(max(1, int(plan.delay * 1000)))
            # Routing key = the consumer's queue: on expiry the default exchange sends it
            # back there and only there, so other subscribers never see the retry.
            copy = OutgoingMessage(
                message.body, delay_exchange_name(plan.bucket), queue, properties
            )
            outcome = Outcome.RETRIED
        else:
            carried = dead_letter_headers(headers, exc, attempts=attempt, queue=queue)
            copy = OutgoingMessage(
                message.body, DLX_EXCHANGE, queue, _copy_properties(message, carried)
            )
            outcome = Outcome.DEAD_LETTERED
        try:
            self.publish([copy])
        except PublishError as err:
            logger.error(
                LOG_COPY_FAILED, _properties(message).get("message_id"), queue, outcome.value, err
            )
            return Outcome.REJECTED, plan
        return outcome, plan


def _properties(message: Any) -> dict[str, Any]:
    # Kombu's Message keeps the headers apart from the other properties; py-amqp's does not.
    properties = dict(message.properties or {})
    headers = getattr(message, "headers", None)
    if headers is not None and "application_headers" not in properties:
        properties["application_headers"] = headers
    return properties


def _copy_properties(message: Any, headers: dict[str, Any]) -> dict[str, Any]:
    properties = _properties(message)
    copied = {name: properties[name] for name in COPIED_PROPERTIES if properties.get(name)}
    copied["application_headers"] = headers
    return copied


def attempt_of(headers: Mapping[str, Any]) -> int:
    """The platform's attempt counter (1 for a first delivery); never read from ``x-death``."""
    value = headers.get(H_ATTEMPT)
    try:
        return max(1, int(value)) if isinstance(value, (int, str, bytes)) else 1
    except ValueError:
        return 1
