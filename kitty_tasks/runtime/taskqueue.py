"""The KITT guide's ``TaskQueue`` facade, built on the platform's Celery setup."""

from __future__ import annotations

import json
import socket
import threading
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from types import TracebackType
from typing import Any

from celery import Celery
from kombu import Connection

from kitty_tasks.core.errors import PayloadTooLarge, Permanent
from kitty_tasks.core.offload import Offload
from kitty_tasks.core.settings import get_settings
from kitty_tasks.core.topology import H_MAX_RETRIES, MAX_PRIORITY, TASK_QUEUES
from kitty_tasks.runtime.application import KittyCelery
from kitty_tasks.runtime.application import app as default_app
from kitty_tasks.runtime.results import result_of, wait_for_result
from kitty_tasks.runtime.sending import TaskBatch, messages_of, trimmed_repr
from kitty_tasks.runtime.task import RETRY_ANY

__all__ = ["DISPATCH_TASK", "TaskContext", "TaskQueue", "worker_shape"]

#: The one Celery task that carries every facade submission: {task_type, data}.
DISPATCH_TASK = "kitty.dispatch"

TaskHandler = Callable[["TaskContext"], Any]
#: One task for ``submit_many``: (task_type, data), or a dict of ``submit``'s arguments.
SubmitItem = tuple[str, dict[str, Any]] | dict[str, Any]


@dataclass(frozen=True)
class TaskContext:
    """What a handler sees: the guide's ``task.task_id``, ``task.data``, retry counters."""

    task_id: str
    task_type: str
    data: dict[str, Any]
    retry_count: int
    max_retries: int
    queue: str


def _builtin_handlers() -> dict[str, TaskHandler]:
    # The platform's own tasks answer to their guide names, so a plain
    # ``celery worker`` on research.tasks serves ``submit(task_type="research_paper")``.
    # Imported here: the task modules import the app, whose ``include`` loads this module.
    from kitty_tasks.tasks.brain import brain_command  # noqa: PLC0415
    from kitty_tasks.tasks.cad import cad_generate  # noqa: PLC0415
    from kitty_tasks.tasks.research import research_paper  # noqa: PLC0415

    return {
        "research_paper": lambda task: research_paper.run(**task.data),
        "cad_generate": lambda task: cad_generate.run(**task.data),
        "brain_command": lambda task: brain_command.run(**task.data),
    }


def register_dispatch(app: Celery, handlers: dict[str, TaskHandler]) -> None:
    """Register the dispatch task on ``app``: ``handlers`` first, then the built-in tasks."""

    # Not shared: each app gets the dispatcher over its own handler registry.
    @app.task(name=DISPATCH_TASK, bind=True, shared=False, autoretry_for=RETRY_ANY)
    def dispatch(self: Any, task_type: str, data: dict[str, Any]) -> Any:
        handler = handlers.get(task_type) or _builtin_handlers().get(task_type)
        if handler is None:
            raise Permanent(
                f"no handler registered for task type {task_type!r} "
                f"(known: {sorted(handlers) or 'none'})"
            )
        context = TaskContext(
            task_id=str(self.request.id),
            task_type=task_type,
            data=data,
            retry_count=int(self.request.retries or 0),
            max_retries=self.retry_limit(),
            queue=self.source_queue(),
        )
        return handler(context)


def _checked(task_type: Any, data: Any, priority: Any, max_retries: Any) -> int:
    """``submit``'s checks of one task; the retries it may take."""
    if not isinstance(task_type, str) or not task_type:
        raise ValueError("task_type must be a non-empty string")
    if not isinstance(data, dict):
        raise TypeError(f"data must be a JSON object (dict), got {type(data).__name__}")
    if (
        isinstance(priority, bool)
        or not isinstance(priority, int)
        or not 0 <= priority <= MAX_PRIORITY
    ):
        raise ValueError(f"priority must be an integer 0-{MAX_PRIORITY}, got {priority!r}")
    retries = get_settings().max_retries if max_retries is None else max_retries
    if isinstance(retries, bool) or not isinstance(retries, int) or retries < 0:
        raise ValueError(f"max_retries must be an integer >= 0, got {max_retries!r}")
    try:
        size = len(json.dumps(data, allow_nan=False).encode())
    except (TypeError, ValueError) as err:
        raise TypeError(f"data is not JSON-serialisable: {err}") from err
    limit = get_settings().max_message_bytes
    if size > limit:
        raise PayloadTooLarge(f"task data is {size} bytes, over KITTY_MAX_MESSAGE_BYTES={limit}")
    return int(retries)


def worker_shape(prefetch_count: int | None, concurrency: int | None) -> tuple[int, int]:
    """(threads, Celery prefetch multiplier) for ``start_worker``; ``ValueError`` if impossible."""
    for name, value in (("prefetch_count", prefetch_count), ("concurrency", concurrency)):
        if value is not None and (not isinstance(value, int) or value < 1):
            raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
    threads = concurrency or prefetch_count or 1
    prefetch = prefetch_count or threads
    if prefetch % threads:
        raise ValueError(
            f"prefetch_count ({prefetch}) must be a multiple of concurrency ({threads}): "
            "a Celery worker reserves concurrency x a whole prefetch multiplier"
        )
    return threads, prefetch // threads


def build_app(url: str, handlers: dict[str, TaskHandler]) -> Celery:
    """A Celery app on ``url`` with the platform's settings and the dispatch task."""
    app = KittyCelery(
        "kitty_tasks.runtime.taskqueue", task_cls="kitty_tasks.runtime.task:KittyTask"
    )
    app.config_from_object("celeryconfig")
    app.conf.broker_url = url
    register_dispatch(app, handlers)
    return app


class TaskQueue:
    """One task queue of the guide: ``submit`` work to it, or serve it with handlers."""

    def __init__(self, url: str | None = None, queue_name: str = "research.tasks") -> None:
        if queue_name not in TASK_QUEUES:
            raise ValueError(f"unknown task queue {queue_name!r}; the topology has {TASK_QUEUES}")
        self.url = url or get_settings().rabbitmq_url
        self.queue = queue_name
        self._handlers: dict[str, TaskHandler] = {}
        self.app = build_app(self.url, self._handlers)
        self._connection: Connection | None = None
        #: Held while a task is published: Kombu's producer channel is not thread-safe.
        self._publishing = threading.Lock()
        self._submitter = Offload("taskqueue-submit", 1)

    def connect(self) -> TaskQueue:
        """Open the connection now, so a wrong URL fails here rather than at ``submit``."""
        if self._connection is None:
            connection = self.app.connection_for_write()
            connection.ensure_connection(max_retries=3)
            self._connection = connection
        return self

    def disconnect(self) -> None:
        """Close the connection; safe to call twice."""
        connection, self._connection = self._connection, None
        if connection is not None:
            connection.release()
        self._submitter.shutdown()

    def __enter__(self) -> TaskQueue:
        return self.connect()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.disconnect()

    def submit(
        self,
        task_type: str,
        data: dict[str, Any],
        priority: int = 0,
        max_retries: int | None = None,
    ) -> str:
        """Publish a task (confirmed by the broker) and return its id."""
        retries = _checked(task_type, data, priority, max_retries)
        task_id = str(uuid.uuid4())
        with self._publishing:
            self.connect()
            self.app.tasks[DISPATCH_TASK].apply_async(
                kwargs={"task_type": task_type, "data": data},
                task_id=task_id,
                queue=self.queue,
                priority=priority,
                headers={H_MAX_RETRIES: retries},
                connection=self._connection,
            )
        return task_id

    def submit_many(self, tasks: Iterable[SubmitItem]) -> list[str]:
        """Publish many tasks with one confirm wait; their ids, in order, once all are confirmed.

        Each item is ``(task_type, data)`` or a dict of ``submit``'s arguments. Every item is
        checked before anything is sent. Raises ``BatchRejected`` naming the refused task ids
        (e.g. the queue filled up) and the confirmed ones, ``BatchTimeout`` when confirms
        did not all come in time.
        """
        task = self.app.tasks[DISPATCH_TASK]
        builder = messages_of(self.app)
        limit = self.app.amqp.kwargsrepr_maxsize
        options: list[tuple[dict[str, Any], dict[str, Any]]] = []
        for item in tasks:
            call = (
                dict(item)
                if isinstance(item, dict)
                else dict(zip(("task_type", "data"), item, strict=True))
            )
            unknown = set(call) - {"task_type", "data", "priority", "max_retries"}
            if unknown or "task_type" not in call or "data" not in call:
                raise ValueError(
                    f"a task to submit is (task_type, data) or a dict of submit's arguments, "
                    f"got {item!r}"
                )
            priority = call.get("priority", 0)
            retries = _checked(call["task_type"], call["data"], priority, call.get("max_retries"))
            kwargs = {"task_type": call["task_type"], "data": call["data"]}
            options.append(
                (
                    kwargs,
                    {
                        "queue": self.queue,
                        "priority": priority,
                        "headers": {H_MAX_RETRIES: retries},
                        "argsrepr": "()",
                        "kwargsrepr": trimmed_repr(kwargs, limit),
                    },
                )
            )
        with self._publishing:
            self.connect()
            assert self._connection is not None  # connect() set it
            batch = TaskBatch(self.app, self._connection)
            for kwargs, publish in options:
                built = builder.build(task, (), kwargs, publish, batch)
                assert built is not None  # every option above is one the builder handles
                batch.add(built)
            return batch.flush()

    async def asubmit_many(self, tasks: Iterable[SubmitItem]) -> list[str]:
        """``submit_many`` for coroutines: the ids once the broker confirmed every task."""
        return await self._submitter.run(self.submit_many, list(tasks))

    async def asubmit(
        self,
        task_type: str,
        data: dict[str, Any],
        priority: int = 0,
        max_retries: int | None = None,
    ) -> str:
        """``submit`` for coroutines: the same checks and errors; the id once the broker confirmed.

        Cancelling the awaiting task stops the wait only: the task may still be submitted.
        """
        # One thread: submissions share the one connection's channel, so they go one at a
        # time anyway (``submit`` holds _publishing), and a confirm takes about a millisecond.
        return await self._submitter.run(self.submit, task_type, data, priority, max_retries)

    def result(self, task_id: str, timeout: float | None = None) -> Any:
        """Wait for a task's return value (``None``: for ever), from any process.

        Raises ``TaskFailed`` (error type, message, attempts) when the task failed, was
        dead-lettered or revoked, and ``TimeoutError`` when it has no result in time.
        """
        return result_of(self.app.AsyncResult(task_id), timeout)

    async def aresult(self, task_id: str, timeout: float | None = None) -> Any:
        """``result`` for an event loop: the store is polled without blocking the loop."""
        return await wait_for_result(self.app.AsyncResult(task_id), timeout)

    def register_handler(self, task_type: str, handler: TaskHandler) -> None:
        """Serve ``task_type`` with ``handler(task)``; its return value is the task's result."""
        if not callable(handler):
            raise TypeError(f"handler for {task_type!r} is not callable")
        self._handlers[task_type] = handler

    def start_worker(
        self,
        prefetch_count: int | None = None,
        *,
        concurrency: int | None = None,
        hostname: str | None = None,
    ) -> None:
        """Serve this queue until SIGINT/SIGTERM: ``concurrency`` handler threads.

        ``prefetch_count`` is how many tasks the worker takes from the broker at once (the
        guide's ``start_worker(prefetch_count=2)``): alone, it also sets the threads, so no
        task waits in the worker behind another; with ``concurrency`` it must be a multiple
        of it (Celery reserves ``concurrency`` x a whole multiplier).
        """
        threads, multiplier = worker_shape(prefetch_count, concurrency)
        worker = self.app.Worker(
            pool="threads",
            concurrency=threads,
            prefetch_multiplier=multiplier,
            queues=[self.queue],
            hostname=hostname
            or f"taskqueue-{self.queue}-{uuid.uuid4().hex[:6]}@{socket.gethostname()}",
            without_mingle=True,
            without_gossip=True,
            loglevel="INFO",
        )
        worker.start()


# Plain ``celery -A kitty_tasks worker`` processes serve facade submissions of the built-in types.
register_dispatch(default_app, {})
