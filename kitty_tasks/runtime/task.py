"""Base Celery task: Celery's task contract, with retries through the broker's delay ladder."""

from __future__ import annotations

import logging
import time
from typing import Any, ClassVar

from amqp.exceptions import MessageNacked
from celery import Task
from celery.exceptions import Ignore, Reject, Retry
from kombu.exceptions import OperationalError
from pydantic import ValidationError

from kitty_tasks.core.errors import (
    InvalidInput,
    PayloadTooLarge,
    Permanent,
    PublishRejected,
    PublishTimeout,
)
from kitty_tasks.core.settings import get_settings
from kitty_tasks.core.topology import H_MAX_RETRIES, H_ORIGINAL_QUEUE
from kitty_tasks.runtime.ladder import (
    EXECUTION,
    PUBLISHING,
    RETRYING,
    ROUTE_OPTIONS,
    Execution,
    LadderRetry,
    dead_letter_options,
    ladder_options,
    publish_finished,
)
from kitty_tasks.runtime.lifecycle_data import check_lifecycle_options
from kitty_tasks.runtime.sending import check_size, send, trimmed_repr

__all__ = ["DEAD_LETTERED", "DEAD_LETTER_FAILED", "RETRY_ANY", "KittyTask"]

logger = logging.getLogger(__name__)

LOG_RETRY = "task %s[%s] failed (%s: %s); attempt %d of %s, retrying in %.1fs via %s"
LOG_COPY_FAILED = "task %s[%s]: dead letter not published (%s); rejecting it to its DLQ"
LOG_DEAD = "task %s[%s] dead-lettered to %s after %d attempt(s): %s: %s"

#: Request attribute set once the failed message is safely in its DLQ (read by the metrics).
DEAD_LETTERED = "kitty_dead_lettered"
#: Request attribute holding the error of a task whose dead-letter copy could not be published.
DEAD_LETTER_FAILED = "kitty_dead_letter_failed"
#: ``autoretry_for=RETRY_ANY``: the platform's own tasks retry every error but ``Permanent``.
RETRY_ANY: tuple[type[Exception], ...] = (Exception,)


class KittyTask(Task):  # type: ignore[misc]
    """Celery's task contract; retries wait in the broker's delay ladder, failures in a DLQ.

    As in Celery, an exception fails the task at once unless the task declares
    ``autoretry_for`` or calls ``self.retry()``. A retry is a confirmed copy
    published to ``kitty.delay.<bucket>``, never an ETA held unacked in a worker.
    A failed task's message is also copied to ``<queue>.dlq`` with the
    ``x-kitty-*`` failure headers. Eager and direct calls stay local.
    """

    #: Left unset: the message's ``x-kitty-max-retries`` header, else ``KITTY_MAX_RETRIES``.
    #: ``max_retries=None`` declared on a task means no limit, as in Celery.
    max_retries: int | None = None
    #: None: a retry without ``countdown``/``eta`` waits the platform's backoff.
    default_retry_delay: float | None = None
    acks_late = True
    reject_on_worker_lost = True
    #: Errors that dead-letter at once, even under ``autoretry_for``: retrying cannot fix them.
    non_retryable: ClassVar[tuple[type[BaseException], ...]] = (Permanent, ValidationError)
    _control_flow: ClassVar[tuple[type[BaseException], ...]] = (Retry, Ignore, Reject)
    #: Publish ``<domain>.task.completed|failed|dead_lettered`` when a worker's run of this
    #: task ends (``KITTY_TASK_EVENTS=false`` turns them off for every task).
    lifecycle_events: bool = True
    #: The events' ``<domain>``; None derives it from the queue (research.tasks -> research).
    event_domain: str | None = None

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        # @app.task(lifecycle_events=..., event_domain=...) lands here as class attributes.
        check_lifecycle_options(
            str(getattr(cls, "name", None) or cls.__name__), cls.lifecycle_events, cls.event_domain
        )

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        token = EXECUTION.set(Execution())
        try:
            return super().__call__(*args, **kwargs)
        except self._control_flow:
            raise
        except ValidationError as exc:
            # pydantic's error cannot be rebuilt from a JSON result; callers get a
            # plain InvalidInput that says which fields were wrong.
            error = InvalidInput(f"invalid input for {self.name}: {exc}")
            self._dead_letter(error, args, kwargs)
            raise error from exc
        except Exception as exc:
            self._dead_letter(exc, args, kwargs)
            raise
        finally:
            EXECUTION.reset(token)

    def apply_async(self, *args: Any, **options: Any) -> Any:
        """Celery's ``apply_async``; a broker nack raises ``PublishRejected`` naming the queue."""
        retrying = RETRYING.get()
        if retrying is not None and options.get("task_id") == retrying.task_id:
            RETRYING.set(None)  # this is the one retry copy; whatever it triggers is not
            return self._publish_retry(retrying, args, options)
        # Celery's saferepr of the arguments (for Flower) took a third of an enqueue's CPU
        # (benchmarks/RESULTS.md); JSON-only arguments repr safely, so a plain, trimmed repr.
        sender = self.app.amqp
        if "argsrepr" not in options:
            task_args = args[0] if args else options.get("args")
            options["argsrepr"] = trimmed_repr(tuple(task_args or ()), sender.argsrepr_maxsize)
        if "kwargsrepr" not in options:
            task_kwargs = args[1] if len(args) > 1 else options.get("kwargs")
            options["kwargsrepr"] = trimmed_repr(task_kwargs or {}, sender.kwargsrepr_maxsize)
        # Celery's message, routed from a cache and confirmed through the core's publisher;
        # collected instead inside a group or submit_many (one confirm wait per batch). Its
        # arguments' size is checked there, on the one JSON encoding of the body.
        try:
            sent = send(self, args, options)
        except PayloadTooLarge:
            publish_finished()  # tracing: the send span begun for a message never sent
            raise
        if sent is not None:
            return sent
        check_size(
            self.name,
            args[0] if args else options.get("args"),
            args[1] if len(args) > 1 else options.get("kwargs"),
        )
        started = time.monotonic()
        token = PUBLISHING.set((options.get("expiration"),))
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
        finally:
            PUBLISHING.reset(token)
            publish_finished()  # tracing: a publish that raised ends its span

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

    def _retries_forever(self) -> bool:
        """Celery's ``max_retries=None`` declared on the task (``chord_unlock`` polls so)."""
        declared = "max_retries" in vars(type(self)) and self.max_retries is None
        return declared and self.request.get(H_MAX_RETRIES) is None

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
        eta: Any = None,
        countdown: float | None = None,
        max_retries: int | None = None,
        **options: Any,
    ) -> Retry:
        """Celery's ``self.retry()``; in a worker the retry copy waits in the delay ladder.

        Everything Celery does is kept (``throw``, ``exc``, extra options such as
        ``queue=``, ``MaxRetriesExceededError``, eager retries); only the copy's
        route changes. ``Permanent`` and validation errors are raised, not retried.
        """
        if isinstance(exc, self.non_retryable):
            raise exc
        request = self.request
        limit = max_retries
        if limit is None and not self._retries_forever():
            limit = self.retry_limit()
        settings = get_settings()
        token = RETRYING.set(
            LadderRetry(
                task_id=str(request.id),
                queue=_queue_name(options.get("queue")) or self._source_or_default(),
                limit=limit,
                exc=exc,
                base=settings.retry_backoff_base,
                cap=settings.retry_backoff_max,
            )
        )
        try:
            result: Retry = super().retry(
                args, kwargs, exc, throw, eta, countdown, limit, **options
            )
        finally:
            RETRYING.reset(token)
            if max_retries is None:
                # Celery keeps the limit on the task object for autoretry; ours is per message.
                self.__dict__.pop("override_max_retries", None)
        return result

    def _source_or_default(self) -> str:
        return "" if self.request.called_directly else self.source_queue()

    def _publish_retry(self, retrying: LadderRetry, args: tuple[Any, ...], options: Any) -> Any:
        """Publish Celery's retry copy to the ladder (confirmed) before the original is acked."""
        request = self.request
        options, plan = ladder_options(retrying, options)
        exchange = options["exchange"].name
        error = retrying.exc
        kind, reason = (type(error).__name__, error) if error is not None else ("Retry", "asked")
        logger.warning(
            LOG_RETRY, self.name, request.id, kind, reason,
            int(request.retries or 0) + 1,
            "unlimited" if retrying.limit is None else retrying.limit + 1,
            plan.delay, exchange,
        )  # fmt: skip
        execution = EXECUTION.get()
        if execution is not None:
            execution.retried = True
        # Through Task.apply_async, without this class's publish-time checks: it is a copy.
        token = PUBLISHING.set((options["expiration"],))
        try:
            return super().apply_async(*args, **options)
        finally:
            PUBLISHING.reset(token)
            publish_finished()  # tracing: a publish that raised ends its span

    def _dead_letter(self, exc: Exception, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        """Copy a failed task's message to ``<queue>.dlq`` with the reason (workers only)."""
        request = self.request
        execution = EXECUTION.get()
        if request.called_directly or request.is_eager:
            return  # a local call: nothing was consumed, nothing to dead-letter
        if execution is not None and execution.retried:
            return  # retry(throw=False) already sent the message on through the ladder
        if request.get(DEAD_LETTERED):
            return
        attempts = int(request.retries or 0) + 1
        queue = self.source_queue()
        logger.error(LOG_DEAD, self.name, request.id, queue, attempts, type(exc).__name__, exc)
        options = dead_letter_options(exc, request.headers, attempts=attempts, queue=queue)
        copy = self.signature_from_request(request, args, kwargs)
        for name in ROUTE_OPTIONS:
            copy.options.pop(name, None)  # its route is dlx; the queue is the routing key
        try:
            copy.apply_async(**options)
        except Exception as err:
            logger.error(LOG_COPY_FAILED, self.name, request.id, err)
            # The lifecycle events report this end as failed, with the task's own error.
            setattr(request, DEAD_LETTER_FAILED, exc)
            # Rejected without requeue, the original goes to the DLQ with x-death.
            raise Reject(reason=f"could not publish the dead-letter copy: {err}") from err
        # The task metrics (kitty_tasks.runtime.signals) count this failure as dead_lettered.
        setattr(request, DEAD_LETTERED, True)


def _queue_name(queue: Any) -> str:
    """The name of a ``queue=`` option, given as a name or as a kombu ``Queue``."""
    return str(getattr(queue, "name", queue) or "")


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
