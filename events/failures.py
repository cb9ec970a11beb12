"""Failed events: retried via the ``kitty.delay.*`` ladder or dead-lettered to ``<queue>.dlq``."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

from pydantic import ValidationError

from events.envelope import Event
from events.errors import Permanent, SchemaError
from kitty_tasks.core.failure import failure_headers, plan_retry, utc_now
from kitty_tasks.core.metrics import EVENTS_FAILED
from kitty_tasks.core.publisher import OutgoingMessage
from kitty_tasks.core.topology import (
    BROKER_DEATH_HEADERS,
    DLX_EXCHANGE,
    H_ATTEMPT,
    H_FIRST_FAILURE,
    H_ORIGINAL_QUEUE,
    delay_exchange_name,
    dlq_name,
)

__all__ = ["NON_RETRYABLE", "Publish", "dead_letter", "retry"]

logger = logging.getLogger(__name__)

#: Publishes copies and waits for their confirms (raising ``PublishError`` when it cannot).
Publish = Callable[[Sequence[OutgoingMessage]], object]

#: Errors of a handler that no retry can fix: dead-lettered at once.
NON_RETRYABLE: tuple[type[BaseException], ...] = (Permanent, SchemaError, ValidationError)
#: AMQP properties copied onto a retried or dead-lettered copy of a delivery.
_COPIED_PROPERTIES = (
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

LOG_RETRY = "handler %s failed on %s %s (%s: %s); attempt %d of %d, retrying in %.1fs via %s"
LOG_DEAD = "%s %s dead-lettered to %s after %d attempt(s): %s: %s"


def retry(
    publish: Publish,
    message: Any,
    *,
    queue: str,
    exc: Exception,
    attempt: int,
    max_retries: int,
    backoff_base: float,
    backoff_max: float,
    headers: dict[str, Any],
    event: Event,
    handler: Callable[..., Any],
) -> None:
    """Send a copy of ``message`` through the delay ladder back to ``queue`` alone."""
    plan = plan_retry(attempt - 1, base=backoff_base, cap=backoff_max)
    exchange = delay_exchange_name(plan.bucket)
    # The broker's record of earlier trips through the ladder; our x-kitty-* headers say more.
    carried = {k: v for k, v in headers.items() if k not in BROKER_DEATH_HEADERS}
    carried.update(
        {
            H_ATTEMPT: attempt + 1,
            H_FIRST_FAILURE: headers.get(H_FIRST_FAILURE) or utc_now(),
            H_ORIGINAL_QUEUE: queue,
        }
    )
    properties = _copy(message, carried)
    # The jittered delay as per-message TTL; the bucket's own TTL bounds it from above.
    properties["expiration"] = str(max(1, int(plan.delay * 1000)))
    # Routing key = the subscriber's queue: on expiry the default exchange sends it back
    # there and only there, so other subscribers never see the retry.
    publish([OutgoingMessage(message.body, exchange, queue, properties)])
    logger.warning(
        LOG_RETRY,
        _name(handler),
        event.event_type,
        event.event_id,
        type(exc).__name__,
        exc,
        attempt,
        max_retries + 1,
        plan.delay,
        exchange,
    )
    EVENTS_FAILED.labels(event.event_type, queue, "retried").inc()


def dead_letter(
    publish: Publish,
    message: Any,
    *,
    queue: str,
    exc: BaseException,
    attempts: int,
    headers: dict[str, Any],
    event_type: str,
) -> None:
    """Send a copy of ``message`` with ``x-kitty-*`` failure headers to ``<queue>.dlq``."""
    carried = {k: v for k, v in headers.items() if k not in BROKER_DEATH_HEADERS}
    carried.update(
        failure_headers(
            exc, attempts=attempts, first_failure=headers.get(H_FIRST_FAILURE), queue=queue
        )
    )
    properties = _copy(message, carried)
    publish([OutgoingMessage(message.body, DLX_EXCHANGE, queue, properties)])
    logger.error(
        LOG_DEAD,
        event_type,
        message.properties.get("message_id"),
        dlq_name(queue),
        attempts,
        type(exc).__name__,
        exc,
    )
    EVENTS_FAILED.labels(event_type, queue, "dead_lettered").inc()


def _copy(message: Any, headers: dict[str, Any]) -> dict[str, Any]:
    properties = {
        name: message.properties[name]
        for name in _COPIED_PROPERTIES
        if message.properties.get(name) is not None
    }
    properties["application_headers"] = headers
    return properties


def _name(handler: Callable[..., Any]) -> str:
    return str(getattr(handler, "__qualname__", None) or repr(handler))
