"""How a task's retry copy and dead letter are addressed: the ladder's wire format for Celery."""

from __future__ import annotations

import sys
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from celery import signals
from kombu import Exchange

from kitty_tasks.core import tracing
from kitty_tasks.core.failure import RetryPlan, dead_letter_headers, plan_failure, retry_headers
from kitty_tasks.core.topology import (
    DLX_EXCHANGE,
    delay_exchange_name,
)

__all__ = [
    "Execution",
    "LadderRetry",
    "dead_letter_options",
    "explicit_expiration",
    "ladder_options",
    "publish_finished",
]

#: Options of Celery's ``signature_from_request`` that only make sense on the original
#: route; the ladder copy goes to a delay exchange instead.
ROUTE_OPTIONS = ("queue", "exchange", "exchange_type", "routing_key", "countdown", "eta")


@dataclass(frozen=True)
class LadderRetry:
    """A ``self.retry()`` in a worker: the copy Celery is about to publish goes to the ladder."""

    task_id: str
    queue: str
    limit: int | None
    exc: BaseException | None
    base: float
    cap: float


@dataclass
class Execution:
    """One worker execution of a task: whether a retry copy of its message was published."""

    retried: bool = False


#: Set by ``KittyTask.retry`` while Celery's own ``retry`` publishes the retry copy.
RETRYING: ContextVar[LadderRetry | None] = ContextVar("kitty_retrying", default=None)
#: The running execution of a task in this context (None outside ``KittyTask.__call__``).
EXECUTION: ContextVar[Execution | None] = ContextVar("kitty_execution", default=None)
#: While ``KittyTask.apply_async`` publishes: the caller's own AMQP ``expiration``, if any.
PUBLISHING: ContextVar[tuple[float | None] | None] = ContextVar("kitty_publishing", default=None)
#: The traced ``send`` of the task message being published here, until it is confirmed
#: (``runtime/task_tracing.py``).
SENDING: ContextVar[tracing.Send | None] = ContextVar("kitty_task_sending", default=None)


def _delay_of(countdown: Any, eta: Any) -> float | None:
    """Seconds a caller asked the retry to wait (``countdown`` or ``eta``), or None."""
    if countdown is not None:
        return max(0.0, float(countdown))
    if eta is None:
        return None
    when = datetime.fromisoformat(eta) if isinstance(eta, str) else eta
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    return max(0.0, (when - datetime.now(timezone.utc)).total_seconds())


def ladder_options(retry: LadderRetry, options: dict[str, Any]) -> tuple[dict[str, Any], RetryPlan]:
    """Celery's retry publish options, readdressed to the delay ladder with the x-kitty headers.

    Everything else Celery put on the copy (headers, stamps, ids, links, priority,
    ``expires``) is kept: the platform's headers are added, never substituted.
    """
    options = dict(options)
    retries = int(options.get("retries") or 1)
    delay = _delay_of(options.get("countdown"), options.get("eta"))
    plan = plan_failure(
        retry.exc or RuntimeError("retry requested"),
        retries=retries - 1,
        max_retries=retries,  # the limit was checked by Celery's retry already
        delay=delay,
        base=retry.base,
        cap=retry.cap,
    )
    if plan is None:  # only a Permanent error gets here, and KittyTask.retry refuses those
        raise RuntimeError("plan_failure refused a retry that Celery's retry allowed")
    for name in ROUTE_OPTIONS:
        options.pop(name, None)
    options.update(
        exchange=Exchange(delay_exchange_name(plan.bucket), type="fanout"),
        routing_key=retry.queue,
        headers=retry_headers(options.get("headers") or {}, queue=retry.queue, attempt=retries + 1),
        # The jittered delay as per-message TTL; the bucket's TTL bounds it.
        expiration=min(plan.delay, float(plan.bucket)),
        retry=False,
    )
    return options, plan


def dead_letter_options(
    exc: BaseException, headers: dict[str, Any] | None, *, attempts: int, queue: str
) -> dict[str, Any]:
    """Publish options of a failed task's dead letter: to ``dlx``, keyed by its queue."""
    carried = dead_letter_headers(headers or {}, exc, attempts=attempts, queue=queue)
    return {
        "exchange": Exchange(DLX_EXCHANGE, type="topic"),
        "routing_key": queue,
        "headers": carried,
        "retry": False,
        # Not a child of the failed task: its result's children are what it started itself.
        "add_to_parent": False,
    }


def publish_finished() -> None:
    """End a traced ``send`` whose publish raised before Celery's ``after_task_publish``."""
    send = SENDING.get()
    if send is not None:
        SENDING.set(None)
        error = sys.exc_info()[1]
        send.end(error if error is not None else RuntimeError("task publish did not finish"))


def explicit_expiration(
    properties: dict[str, Any] | None = None, headers: dict[str, Any] | None = None, **_: Any
) -> None:
    """Keep only a caller's own AMQP expiration on a KittyTask publish.

    Celery turns ``expires`` into a broker TTL too; a queue of the platform then
    dead-letters the message unseen and its result never settles. Without the TTL
    a worker takes it, sees it expired, and stores REVOKED, as Celery promises.
    """
    publishing = PUBLISHING.get()
    if publishing is None or properties is None:
        return  # not a KittyTask publish
    (expiration,) = publishing
    if expiration is not None:
        properties["expiration"] = expiration
    elif (headers or {}).get("expires") is not None:
        properties.pop("expiration", None)


signals.before_task_publish.connect(explicit_expiration, weak=False)
