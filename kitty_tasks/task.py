"""Base Celery task: retries through the broker's delay ladder, dead-letters with the reason."""

from __future__ import annotations

import logging
from typing import Any, ClassVar

from amqp.exceptions import MessageNacked
from celery import Task
from celery.exceptions import Ignore, Reject, Retry
from kombu import Exchange
from kombu.exceptions import OperationalError
from pydantic import ValidationError

from kitty_tasks.deadletter import failure_headers, utc_now
from kitty_tasks.errors import InvalidInput, Permanent, PublishRejected
from kitty_tasks.retry import plan_retry
from kitty_tasks.settings import get_settings
from kitty_tasks.topology import (
    DLX_EXCHANGE,
    H_ATTEMPT,
    H_FIRST_FAILURE,
    H_MAX_RETRIES,
    H_ORIGINAL_QUEUE,
    delay_exchange_name,
)

__all__ = ["KittyTask"]

logger = logging.getLogger(__name__)

LOG_RETRY = "task %s[%s] failed (%s: %s); attempt %d of %d, retrying in %.1fs via %s"
LOG_DEAD = "task %s[%s] dead-lettered to %s after %d attempt(s): %s: %s"


class KittyTask(Task):  # type: ignore[misc]
    """A task whose failures are retried by a publish to the delay ladder, never held in a worker.

    After ``max_retries`` retries, or at once for a non-retryable error, the task
    message is published to ``dlx`` with its queue as routing key, so it lands in
    ``<queue>.dlq`` with the ``x-kitty-*`` failure headers, and the task's result
    is FAILURE.
    """

    max_retries: int | None = None
    acks_late = True
    reject_on_worker_lost = True
    #: Errors that dead-letter at once: retrying cannot fix them.
    non_retryable: ClassVar[tuple[type[BaseException], ...]] = (Permanent,)
    _control_flow: ClassVar[tuple[type[BaseException], ...]] = (Retry, Ignore, Reject)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return super().__call__(*args, **kwargs)
        except self._control_flow:
            raise
        except ValidationError as exc:
            # pydantic's error cannot be rebuilt from a JSON result; callers get a
            # plain InvalidInput that says which fields were wrong.
            error = InvalidInput(f"invalid input for {self.name}: {exc}")
            self._on_task_error(error, args, kwargs)
            raise error from exc
        except Exception as exc:
            self._on_task_error(exc, args, kwargs)
            raise

    def apply_async(self, *args: Any, **options: Any) -> Any:
        """Celery's ``apply_async``; a broker nack raises ``PublishRejected`` naming the queue."""
        try:
            return super().apply_async(*args, **options)
        except (MessageNacked, OperationalError) as err:
            # kombu wraps the nack in OperationalError; other connection errors pass on.
            if not isinstance(err, MessageNacked) and not isinstance(err.__cause__, MessageNacked):
                raise
            queue = options.get("queue") or options.get("routing_key") or self._default_queue()
            raise PublishRejected(
                f"broker refused task {self.name!r} for queue {queue!r}: the queue is full "
                "(x-overflow reject-publish) or unavailable",
                queue=str(queue),
            ) from err

    def _default_queue(self) -> str:
        return str(self.app.amqp.router.route({}, self.name)["queue"].name)

    def retry_limit(self) -> int:
        """Retries allowed for this message: its header, else the task's, else the settings'."""
        per_message = self.request.get(H_MAX_RETRIES)
        if per_message is not None:
            return int(per_message)
        if self.max_retries is not None:
            return int(self.max_retries)
        return get_settings().max_retries

    def source_queue(self) -> str:
        """The queue this delivery came from (also after a trip through the ladder)."""
        delivery = self.request.delivery_info or {}
        queue = self.request.get(H_ORIGINAL_QUEUE) or delivery.get("routing_key")
        return str(queue or self._default_queue())

    def _on_task_error(self, exc: Exception, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        request = self.request
        retries = int(request.retries or 0)
        limit = self.retry_limit()
        queue = self.source_queue()
        first_failure = request.get(H_FIRST_FAILURE) or utc_now()
        carried = {H_FIRST_FAILURE: first_failure, H_ORIGINAL_QUEUE: queue}
        if request.get(H_MAX_RETRIES) is not None:
            carried[H_MAX_RETRIES] = int(request.get(H_MAX_RETRIES))
        if not isinstance(exc, self.non_retryable) and retries < limit:
            settings = get_settings()
            plan = plan_retry(
                retries, base=settings.retry_backoff_base, cap=settings.retry_backoff_max
            )
            exchange = delay_exchange_name(plan.bucket)
            logger.warning(
                LOG_RETRY,
                self.name,
                request.id,
                type(exc).__name__,
                exc,
                retries + 1,
                limit + 1,
                plan.delay,
                exchange,
            )
            self.signature_from_request(
                request,
                args,
                kwargs,
                retries=retries + 1,
            ).apply_async(
                exchange=Exchange(exchange, type="fanout"),
                routing_key=queue,
                headers={**carried, H_ATTEMPT: retries + 2},
                expiration=plan.delay,
                retry=False,
            )
            # The copy is confirmed by the broker: only now may the original be acked.
            raise Retry(exc=exc, when=plan.delay) from exc
        headers = failure_headers(
            exc, attempts=retries + 1, first_failure=first_failure, queue=queue
        )
        logger.error(LOG_DEAD, self.name, request.id, queue, retries + 1, type(exc).__name__, exc)
        self.signature_from_request(request, args, kwargs).apply_async(
            exchange=Exchange(DLX_EXCHANGE, type="topic"),
            routing_key=queue,
            headers={**carried, **headers},
            retry=False,
        )
        # The task metrics (kitty_tasks.signals) count this failure as dead_lettered.
        request.kitty_dead_lettered = True
