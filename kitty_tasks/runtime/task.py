"""Base Celery task: retries through the broker's delay ladder, dead-letters with the reason."""

from __future__ import annotations

import logging
import time
from datetime import datetime, timezone
from typing import Any, ClassVar

from amqp.exceptions import MessageNacked
from celery import Task
from celery.exceptions import Ignore, Reject, Retry
from kombu import Exchange
from kombu.exceptions import OperationalError
from kombu.utils.json import dumps as json_dumps
from pydantic import ValidationError

from kitty_tasks.core.errors import (
    InvalidInput,
    PayloadTooLarge,
    Permanent,
    PublishRejected,
    PublishTimeout,
)
from kitty_tasks.core.failure import RetryPlan, failure_headers, plan_retry, utc_now
from kitty_tasks.core.settings import get_settings
from kitty_tasks.core.topology import (
    DLX_EXCHANGE,
    H_ATTEMPT,
    H_FIRST_FAILURE,
    H_MAX_RETRIES,
    H_ORIGINAL_QUEUE,
    delay_exchange_name,
    pick_bucket,
)

__all__ = ["DEAD_LETTERED", "KittyTask"]

logger = logging.getLogger(__name__)

LOG_RETRY = "task %s[%s] failed (%s: %s); attempt %d of %d, retrying in %.1fs via %s"
LOG_COPY_FAILED = "task %s[%s]: copy not published (%s); rejecting it to its DLQ"
LOG_DEAD = "task %s[%s] dead-lettered to %s after %d attempt(s): %s: %s"

#: Request attribute set once the failed message is safely in its DLQ (read by the metrics).
DEAD_LETTERED = "kitty_dead_lettered"


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
        # Celery's saferepr of the arguments (for Flower) took a third of an enqueue's CPU
        # (benchmarks/RESULTS.md); JSON-only arguments repr safely, so a plain, trimmed repr.
        sender = self.app.amqp
        if "argsrepr" not in options:
            task_args = args[0] if args else options.get("args")
            options["argsrepr"] = _trimmed_repr(tuple(task_args or ()), sender.argsrepr_maxsize)
        if "kwargsrepr" not in options:
            task_kwargs = args[1] if len(args) > 1 else options.get("kwargs")
            options["kwargsrepr"] = _trimmed_repr(task_kwargs or {}, sender.kwargsrepr_maxsize)
        _check_size(
            self.name,
            args[0] if args else options.get("args"),
            args[1] if len(args) > 1 else options.get("kwargs"),
        )
        started = time.monotonic()
        try:
            return super().apply_async(*args, **options)
        except (MessageNacked, OperationalError, TimeoutError) as err:
            if _caused_by(err, TimeoutError):
                # The socket timeouts of broker_transport_options fired: the broker took
                # the bytes but sent no confirm, as under a memory or disk alarm.
                bound = (self.app.conf.broker_transport_options or {}).get("read_timeout")
                raise PublishTimeout(
                    f"broker did not confirm task {self.name!r} within "
                    f"{time.monotonic() - started:.1f}s (socket bound {bound}s, "
                    "KITTY_PUBLISH_TIMEOUT): is a memory or disk alarm blocking publishers?"
                ) from err
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

    def retry(  # noqa: PLR0917 - Celery's own signature
        self,
        args: tuple[Any, ...] | None = None,
        kwargs: dict[str, Any] | None = None,
        exc: BaseException | None = None,
        throw: bool = True,
        eta: datetime | None = None,
        countdown: float | None = None,
        max_retries: int | None = None,
        **options: Any,
    ) -> Retry:
        """Celery's ``self.retry()``, realised through the delay ladder instead of an ETA.

        Celery's ``autoretry_for`` calls this too, so every retry of every task waits
        in a ``kitty.delay.*`` queue, never unacked in a worker. Out of retries, the
        message is dead-lettered and ``exc`` is raised.
        """
        request = self.request
        error = exc if isinstance(exc, Exception) else RuntimeError("retry requested")
        delay: float | None = countdown
        if delay is None and eta is not None:
            delay = max(0.0, (eta - datetime.now(timezone.utc)).total_seconds())
        self._after_failure(
            error,
            request.args if args is None else args,
            request.kwargs if kwargs is None else kwargs,
            delay=delay,
            limit=max_retries,
        )
        # Out of retries: the copy is in the DLQ; fail the task with the error itself.
        raise error

    def _on_task_error(self, exc: Exception, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        if self.request.get(DEAD_LETTERED):
            return  # already dead-lettered by retry(); Celery's wrapper re-raised it
        self._after_failure(exc, args, kwargs)

    def _after_failure(
        self,
        exc: Exception,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        *,
        delay: float | None = None,
        limit: int | None = None,
    ) -> None:
        """Retry ``exc`` through the ladder (raises ``Retry``) or dead-letter it (returns)."""
        request = self.request
        retries = int(request.retries or 0)
        limit = self.retry_limit() if limit is None else limit
        queue = self.source_queue()
        first_failure = request.get(H_FIRST_FAILURE) or utc_now()
        carried = {H_FIRST_FAILURE: first_failure, H_ORIGINAL_QUEUE: queue}
        if request.get(H_MAX_RETRIES) is not None:
            carried[H_MAX_RETRIES] = int(request.get(H_MAX_RETRIES))
        if not isinstance(exc, self.non_retryable) and retries < limit:
            settings = get_settings()
            if delay is None:
                plan = plan_retry(
                    retries, base=settings.retry_backoff_base, cap=settings.retry_backoff_max
                )
            else:
                plan = RetryPlan(bucket=pick_bucket(delay), delay=delay)
            exchange = delay_exchange_name(plan.bucket)
            logger.warning(
                LOG_RETRY, self.name, request.id, type(exc).__name__, exc,
                retries + 1, limit + 1, plan.delay, exchange,
            )  # fmt: skip
            self._publish_or_reject(
                request, args, kwargs,
                retries=retries + 1,
                exchange=Exchange(exchange, type="fanout"),
                routing_key=queue,
                headers={**carried, H_ATTEMPT: retries + 2},
                # The jittered delay as per-message TTL; the bucket's TTL bounds it.
                expiration=min(plan.delay, plan.bucket),
            )  # fmt: skip
            # The copy is confirmed by the broker: only now may the original be acked.
            raise Retry(exc=exc, when=plan.delay) from exc
        headers = failure_headers(
            exc, attempts=retries + 1, first_failure=first_failure, queue=queue
        )
        logger.error(LOG_DEAD, self.name, request.id, queue, retries + 1, type(exc).__name__, exc)
        self._publish_or_reject(
            request, args, kwargs,
            exchange=Exchange(DLX_EXCHANGE, type="topic"),
            routing_key=queue,
            headers={**carried, **headers},
        )  # fmt: skip
        # The task metrics (kitty_tasks.runtime.signals) count this failure as dead_lettered,
        # and _on_task_error knows not to dead-letter it a second time.
        setattr(request, DEAD_LETTERED, True)

    def _publish_or_reject(
        self, request: Any, args: tuple[Any, ...], kwargs: dict[str, Any], **options: Any
    ) -> None:
        """Publish a confirmed copy of the running task; if that fails, reject the original.

        Rejecting (without requeue) lets the broker dead-letter the original into the
        DLQ with ``x-death``: the message is never acked away without a copy.
        """
        extra = {"retries": options.pop("retries")} if "retries" in options else {}
        try:
            self.signature_from_request(request, args, kwargs, **extra).apply_async(
                retry=False, **options
            )
        except Exception as err:
            logger.error(LOG_COPY_FAILED, self.name, request.id, err)
            raise Reject(reason=f"could not publish the retry/dead-letter copy: {err}") from err


def _trimmed_repr(value: Any, limit: int) -> str:
    """``repr(value)`` cut to ``limit`` characters, as Flower shows task arguments."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _caused_by(err: BaseException, kind: type[BaseException]) -> bool:
    """True when ``err`` or an exception in its cause/context chain is a ``kind``."""
    seen: set[int] = set()
    current: BaseException | None = err
    while current is not None and id(current) not in seen:
        if isinstance(current, kind):
            return True
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return False


def _check_size(name: str, args: Any, kwargs: Any) -> None:
    """Raise ``PayloadTooLarge`` when the task's JSON arguments exceed KITTY_MAX_MESSAGE_BYTES."""
    try:
        # ~2 us for typical arguments; Celery serialises them once more when it publishes.
        size = len(json_dumps([args or (), kwargs or {}]).encode())
    except Exception:  # Celery raises its own EncodeError for what JSON cannot carry
        return
    limit = get_settings().max_message_bytes
    if size > limit:
        raise PayloadTooLarge(
            f"task {name!r} arguments are {size:,} bytes as JSON, over the {limit:,}-byte "
            "limit (KITTY_MAX_MESSAGE_BYTES); nothing was sent"
        )
