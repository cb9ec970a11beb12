"""The delivery decision: decode, validate and handle one event, then ack or reject it.

Failures go through the platform's one ``FailurePolicy``: a confirmed copy to the
``kitty.delay.*`` ladder (back to this subscription's queue only) or to ``dlx``, then the
original is acked; when the copy is not confirmed the original is rejected without
requeue, so the broker dead-letters it (``x-death``) instead of the bus looping on it.
"""

from __future__ import annotations

import contextvars
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from events.envelope import Event
from events.errors import DecodeError, Permanent, SchemaError, UnverifiedSource
from events.schemas import SchemaRegistry
from events.subscriptions import EventHandler
from kitty_tasks.core import tracing
from kitty_tasks.core.access import publisher_may_claim
from kitty_tasks.core.dead_letters import oversized
from kitty_tasks.core.failure import FailurePolicy, Outcome, RetryPlan, attempt_of
from kitty_tasks.core.metrics import EVENTS_CONSUMED, EVENTS_FAILED
from kitty_tasks.core.topology import H_ATTEMPT, delay_exchange_name, dlq_name

__all__ = ["NON_RETRYABLE", "Ack", "EventDelivery", "current_event"]

logger = logging.getLogger(__name__)

#: Settles a handled delivery (the consumer batches these acks).
Ack = Callable[[Any], None]

#: Errors of a handler that no retry can fix: dead-lettered at once.
NON_RETRYABLE: tuple[type[BaseException], ...] = (Permanent, SchemaError, ValidationError)

LOG_RETRY = "handler %s failed on %s %s (%s: %s); attempt %d of %d, retrying in %.1fs via %s"
LOG_DEAD = "%s %s dead-lettered to %s after %d attempt(s): %s: %s"
LOG_REJECTED = "%s %s rejected to %s after %d attempt(s), its copy unconfirmed: %s: %s"
LOG_BUG = "unexpected error while processing a delivery from %s; rejected to its DLQ"

#: The event a handler is working on, so events it publishes carry causation and correlation.
current_event: contextvars.ContextVar[Event | None] = contextvars.ContextVar(
    "kitty_current_event", default=None
)


@dataclass(frozen=True)
class EventDelivery:
    """Handles each delivery of one subscription and settles it: ack, or reject to the DLQ.

    Args:
        queue: the subscription's queue (retries come back to it alone).
        handler: the subscriber's handler.
        registry: validates each event's data.
        policy: retries or dead-letters failed deliveries.
        require_schemas: dead-letter events of types without a schema.
        max_message_bytes: bodies over it are dead-lettered before decoding.
        verify_source: dead-letter events whose publishing broker user may not claim
            their ``source`` (by the access table).
        own_user: this bus's broker user, which publishes its own retry copies.
    """

    queue: str
    handler: EventHandler
    registry: SchemaRegistry
    policy: FailurePolicy
    require_schemas: bool = False
    max_message_bytes: int = 1024 * 1024
    verify_source: bool = False
    own_user: str | None = None

    def __call__(self, message: Any, ack: Ack) -> None:
        """Handle ``message`` (a Kombu delivery), then ``ack(message)`` or reject it."""
        process = self._trace(message)
        try:
            settled_by_ack = self._decide(message)
        except Exception as err:
            # A bug of ours, not of the handler: the DLQ keeps it (x-death) rather than a loop.
            logger.exception(LOG_BUG, self.queue)
            tracing.failed(err, Outcome.REJECTED.value)
            settled_by_ack = False
        finally:
            process.end()
        if settled_by_ack:
            ack(message)
        else:
            message.reject(requeue=False)

    def _trace(self, message: Any) -> tracing.Process:
        """The ``process`` span of this delivery: a new trace linked to the publisher's span.

        Linked, not a child: an event is fire-and-forget, fanned out to every subscriber
        and replayed from the audit stream days later; its handling is not part of the
        publisher's operation (docs/tracing.md).
        """
        if not tracing.enabled():
            return tracing.NO_PROCESS
        headers = message.headers or {}
        delivery = message.delivery_info or {}
        return tracing.start_process(
            headers,
            exchange=str(delivery.get("exchange") or ""),
            routing_key=str(delivery.get("routing_key") or ""),
            queue=self.queue,
            message_id=message.properties.get("message_id"),
            conversation_id=message.properties.get("correlation_id"),
            link=True,
            attempt=attempt_of(headers),
        )

    def _decide(self, message: Any) -> bool:
        """Run the handler or the failure policy; True to ack ``message``, False to reject."""
        too_large = oversized(message.body, self.max_message_bytes)
        if too_large is not None:
            event_type = str(message.properties.get("type") or "unknown")
            return self._fail(message, too_large, event_type, retryable=False)
        try:
            event = Event.decode(
                message.body,
                content_type=message.content_type,
                content_encoding=message.content_encoding,
                message_id=message.properties.get("message_id"),
            )
            self.registry.validate_incoming(event, require=self.require_schemas)
        except (DecodeError, SchemaError) as err:
            event_type = str(message.properties.get("type") or "unknown")
            return self._fail(message, err, event_type, retryable=False)
        event = event.published_by(message.properties.get("user_id"))
        if self.verify_source:
            reason = self._unverified(event, message.headers or {})
            if reason is not None:
                return self._fail(
                    message, UnverifiedSource(reason), event.event_type, retryable=False
                )
        token = current_event.set(event)
        try:
            self.handler(event)
        except Exception as exc:
            retryable = not isinstance(exc, NON_RETRYABLE)
            return self._fail(message, exc, event.event_type, retryable=retryable)
        finally:
            current_event.reset(token)
        consumed_counter(event.event_type, self.queue).inc()
        return True

    def _unverified(self, event: Event, headers: dict[str, Any]) -> str | None:
        """Why ``event`` may not be trusted to come from its ``source``; None when it may."""
        if (
            event.publisher is not None
            and event.publisher == self.own_user
            and H_ATTEMPT in headers
        ):
            # A retry copy this bus made itself, after the first delivery passed this check.
            return None
        return publisher_may_claim(event.publisher, event.source)

    def _fail(self, message: Any, exc: Exception, event_type: str, *, retryable: bool) -> bool:
        """Retry or dead-letter ``message`` by the policy; log and count what became of it."""
        outcome, plan = self.policy.handle(message, exc, queue=self.queue, retryable=retryable)
        tracing.failed(exc, outcome.value)
        attempt = attempt_of(message.headers or {})
        message_id = message.properties.get("message_id")
        error = (type(exc).__name__, exc)
        if outcome is Outcome.RETRIED and plan is not None:
            self._log_retry(event_type, message_id, exc, attempt, plan)
        elif outcome is Outcome.DEAD_LETTERED:
            logger.error(LOG_DEAD, event_type, message_id, dlq_name(self.queue), attempt, *error)
        else:
            logger.error(
                LOG_REJECTED, event_type, message_id, dlq_name(self.queue), attempt, *error
            )
        EVENTS_FAILED.labels(event_type, self.queue, outcome.value).inc()
        return outcome.ack

    def _log_retry(
        self, event_type: str, message_id: object, exc: Exception, attempt: int, plan: RetryPlan
    ) -> None:
        logger.warning(
            LOG_RETRY,
            handler_name(self.handler),
            event_type,
            message_id,
            type(exc).__name__,
            exc,
            attempt,
            self.policy.max_retries + 1,
            plan.delay,
            delay_exchange_name(plan.bucket),
        )


def handler_name(handler: Callable[..., Any]) -> str:
    """How logs name ``handler``."""
    return str(getattr(handler, "__qualname__", None) or repr(handler))


#: EVENTS_CONSUMED's child per (event type, queue): ``labels()`` costs more than a dict lookup.
_CONSUMED: dict[tuple[str, str], Any] = {}
#: Bounds the cache: event types come from the wire.
_CONSUMED_LIMIT = 10_000


def consumed_counter(event_type: str, queue: str) -> Any:
    """EVENTS_CONSUMED for ``(event_type, queue)``, cached."""
    counter = _CONSUMED.get((event_type, queue))
    if counter is None:
        counter = EVENTS_CONSUMED.labels(event_type, queue)
        if len(_CONSUMED) < _CONSUMED_LIMIT:
            _CONSUMED[(event_type, queue)] = counter
    return counter
