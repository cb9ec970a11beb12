"""Task messages built as Celery builds them, published through the core's ConfirmedPublisher.

Celery's ``apply_async`` -> ``send_task`` -> ``Producer.publish`` rebuilds the route, the
exec options and a producer on every call, then waits for each message's confirm. Here
the message itself still comes from Celery (``app.amqp.create_task_message``: a standard
protocol-2 message any Celery worker reads) and Celery's publish signals still fire; the
route is cached per task and queue, and a batch of messages waits for its confirms once
(``ConfirmedPublisher.publish_batch``). Calls with options this module does not handle go
through Celery's own path (``build`` returns None).
"""

from __future__ import annotations

import uuid
import weakref
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

from celery import Celery, signals
from celery.app.task import extract_exec_options
from celery.utils.functional import maybe_list
from kombu import Connection, Queue
from kombu.common import maybe_declare
from kombu.serialization import dumps
from kombu.utils.json import dumps as json_dumps

from kitty_tasks.core.errors import BatchRejected, BatchTimeout, PayloadTooLarge
from kitty_tasks.core.publisher import ConfirmedPublisher, OutgoingMessage
from kitty_tasks.core.settings import get_settings
from kitty_tasks.runtime.ladder import SENDING

__all__ = [
    "BATCH",
    "TaskBatch",
    "TaskMessages",
    "batch_on",
    "check_size",
    "messages_of",
    "send",
    "trimmed_repr",
]

#: Options the direct path handles; any other option sends the task through Celery's path.
HANDLED = frozenset(
    {
        "task_id", "producer", "add_to_parent", "group_id", "group_index", "root_id",
        "parent_id", "chord", "priority", "queue", "headers", "argsrepr", "kwargsrepr",
        "route_name", "result_cls", "link", "link_error", "shadow", "countdown", "eta",
        "expires", "time_limit", "soft_time_limit", "ignore_result", "retries", "reply_to",
        "chain", "serializer", "delivery_mode", "retry", "retry_policy",
    }
)  # fmt: skip

#: The batch a group or ``submit_many`` collects into, with the producer that identifies it.
BATCH: ContextVar[TaskBatch | None] = ContextVar("kitty_task_batch", default=None)


@dataclass(frozen=True)
class Route:
    """Where a task's messages go, as Celery's ``send_task_message`` works it out."""

    exchange: str
    routing_key: str
    delivery_mode: int
    queue: Queue | None
    options: dict[str, Any]


@dataclass
class Built:
    """One task message ready to publish, and what its publish signals need."""

    task_id: str
    name: str
    message: OutgoingMessage
    body: Any
    queue: str
    ignore_result: bool
    declare: Queue | None = None
    #: Its traced ``send`` span (tracing on), ended once the batch's confirms say how it went.
    send: Any = None


class TaskMessages:
    """Builds an app's task messages; routes cached per (task, queue, key) for static routes."""

    def __init__(self, app: Celery) -> None:
        self.app = app
        conf = app.conf
        # A router function may look at the arguments; only map routes (dicts) are cached.
        routes = conf.task_routes
        self._cacheable = (
            routes is None
            or isinstance(routes, dict)
            or all(isinstance(r, dict) for r in maybe_list(routes) or ())
        )
        self._routes: dict[tuple[str, Any, Any], Route] = {}
        self._exec: dict[str, dict[str, Any]] = {}
        self._serializer = conf.task_serializer
        self._default_mode = conf.task_default_delivery_mode
        self._inherit_priority = conf.task_inherit_parent_priority
        # Celery's message maker for the app's protocol (two cached-property reads a task).
        self._create_message = app.amqp.create_task_message

    def route(self, name: str, options: dict[str, Any], task: Any) -> Route:
        """Celery's route for ``name`` with ``options`` (queue, routing_key, priority ...)."""
        key = (name, options.get("queue"), options.get("routing_key"))
        cached = self._routes.get(key) if self._cacheable else None
        if cached is not None:
            return cached
        routed = self.app.amqp.router.route(dict(options), name, (), {}, task)
        queue = routed.pop("queue", None)
        exchange, routing_key = routed.pop("exchange", None), routed.pop("routing_key", None)
        exchange_type = routed.pop("exchange_type", None)
        if isinstance(queue, str):
            queue = self.app.amqp.queues[queue]
        elif queue is None and exchange is None:
            queue = self.app.amqp.default_queue
        qname = queue.name if queue is not None else None
        # As celery.app.amqp.AMQP.send_task_message: a direct exchange without both an
        # exchange and a key goes through the default exchange, keyed by the queue.
        mode = getattr(getattr(queue, "exchange", None), "delivery_mode", None)
        mode = mode or self._default_mode
        if exchange_type is None:
            exchange_type = getattr(getattr(queue, "exchange", None), "type", "direct")
        if (not exchange or not routing_key) and exchange_type == "direct":
            exchange, routing_key = "", qname
        elif exchange is None:
            exchange = queue.exchange.name or self.app.amqp.default_exchange.name
            routing_key = routing_key or queue.routing_key or self.app.conf.task_default_routing_key
        exchange = getattr(exchange, "name", exchange)
        leftover = {k: v for k, v in routed.items() if k not in options or options[k] != v}
        route = Route(
            exchange=str(exchange or ""),
            routing_key=str(routing_key or ""),
            delivery_mode=2 if mode in (2, "persistent") else 1,
            queue=queue,
            options=leftover,
        )
        if self._cacheable and len(self._routes) < 4096:
            self._routes[key] = route
        return route

    def build(
        self,
        task: Any,
        args: Sequence[Any] | None,
        kwargs: dict[str, Any] | None,
        options: Any,
        batch: TaskBatch | None = None,
    ) -> Built | None:
        """The message ``task.apply_async(args, kwargs, **options)`` would publish, or None.

        None: an option or task feature this path does not handle (eager mode, pydantic
        arguments, stamping, AMQP ``expiration`` ...); the caller uses Celery's own path.
        Raises ``PayloadTooLarge`` for arguments over KITTY_MAX_MESSAGE_BYTES as JSON.
        Inside ``batch``, what is the same for all its tasks is read once, by the batch.
        """
        app = self.app
        if not HANDLED.issuperset(options):
            return None
        if batch.eager if batch is not None else app.conf.task_always_eager:
            return None
        if getattr(task, "pydantic", False) or (task.soft_time_limit and task.time_limit):
            return None
        name = task.name
        if task.typing:
            header = getattr(task, "__header__", None)
            if header is not None:
                header(*(args or ()), **(kwargs or {}))  # Celery's own argument check
        preset = self._exec.get(name)
        if preset is None:
            preset = self._exec[name] = {
                k: v for k, v in extract_exec_options(task).items() if v is not None
            }
        options = {**preset, **options}
        if not HANDLED.issuperset(options):
            return None
        shadow = options.pop("shadow", None) or task.shadow_name(args, kwargs, options)
        options.setdefault("ignore_result", task.ignore_result)
        route = self.route(options.pop("route_name", None) or name, options, task)
        task_id = options.get("task_id") or str(uuid.uuid4())
        root_id, parent_id = options.get("root_id"), options.get("parent_id")
        priority = options.get("priority", route.options.get("priority"))
        if not root_id or not parent_id:
            parent = batch.parent if batch is not None else app.current_worker_task
            if parent:
                root_id = root_id or parent.request.root_id or parent.request.id
                parent_id = parent_id or parent.request.id
                if self._inherit_priority and priority is None:
                    priority = (parent.request.delivery_info or {}).get("priority")
        ignore_result = bool(options["ignore_result"])
        headers, properties, body, _ = self._create_message(
            task_id, name, args, kwargs,
            options.get("countdown"), options.get("eta"),
            options.get("group_id"), options.get("group_index"),
            options.get("expires"), options.get("retries", 0), options.get("chord"),
            maybe_list(options.get("link")), maybe_list(options.get("link_error")),
            options.get("reply_to") or app.thread_oid,
            options.get("time_limit"), options.get("soft_time_limit"),
            False, root_id, parent_id, shadow, options.get("chain"),
            ignore_result=ignore_result,
            argsrepr=options.get("argsrepr"), kwargsrepr=options.get("kwargsrepr"),
        )  # fmt: skip
        if options.get("headers"):
            headers.update(options["headers"])
        exchange, routing_key = route.exchange, route.routing_key
        # The hooks Celery runs before every publish (publish-time stamp, tracing, ...).
        signals.before_task_publish.send(
            sender=name, body=body, exchange=exchange, routing_key=routing_key,
            declare=[route.queue] if route.queue is not None else [],
            headers=headers, properties=properties, retry_policy={},
        )  # fmt: skip
        # Tracing's hook made the message's send span current; a batch holds many messages
        # at once, so each keeps its own until the batch's confirms come back.
        send = SENDING.get()
        SENDING.set(None)
        try:
            content_type, encoding, data = dumps(
                body, options.get("serializer") or self._serializer
            )
            data = data if isinstance(data, bytes) else data.encode()
            # The arguments are part of the JSON body: a body within the limit needs no second
            # encoding to size them; only a larger one (or another serializer) is sized exactly.
            if content_type != "application/json" or len(data) > get_settings().max_message_bytes:
                check_size(name, args, kwargs)
        except BaseException as error:
            _end_send(send, error)
            raise
        mode = options.get("delivery_mode")
        amqp_properties = {
            **{k: v for k, v in properties.items() if v is not None},
            "content_type": content_type,
            "content_encoding": encoding,
            "application_headers": headers,
            "delivery_mode": 2 if mode in (2, "persistent") else route.delivery_mode,
            "priority": priority or 0,
            # Not part of Celery's protocol: lets a basic.return name its task.
            "message_id": task_id,
        }
        amqp_properties.pop("expiration", None)  # as KittyTask: expiry is the worker's call
        message = OutgoingMessage(data, exchange, routing_key, amqp_properties)
        queue = route.queue.name if route.queue is not None else routing_key
        return Built(task_id, name, message, body, queue, ignore_result, route.queue, send)


_MESSAGES: weakref.WeakKeyDictionary[Celery, TaskMessages] = weakref.WeakKeyDictionary()
_PUBLISHERS: weakref.WeakKeyDictionary[Connection, ConfirmedPublisher] = weakref.WeakKeyDictionary()
#: Task queues declared on each connection (as kombu's ``maybe_declare`` cache).
_DECLARED: weakref.WeakKeyDictionary[Connection, set[str]] = weakref.WeakKeyDictionary()


def messages_of(app: Celery) -> TaskMessages:
    """The app's message builder (its route cache lives as long as the app)."""
    builder = _MESSAGES.get(app)
    if builder is None:
        builder = _MESSAGES[app] = TaskMessages(app)
    return builder


def publisher_of(connection: Connection) -> ConfirmedPublisher:
    """One confirm-mode channel per connection, kept for its next batch."""
    publisher = _PUBLISHERS.get(connection)
    if publisher is None:
        publisher = _PUBLISHERS[connection] = ConfirmedPublisher(connection)
    return publisher


@dataclass
class TaskBatch:
    """Task messages collected on one connection, published with one confirm wait."""

    app: Celery
    connection: Connection
    #: The kombu producer a group passes to its tasks: marks them as this batch's.
    producer: Any = None
    built: list[Built] = field(default_factory=list)

    # Read once for the batch's tasks: an app setting and a stack lookup fewer per task.
    @cached_property
    def eager(self) -> bool:
        """The app's ``task_always_eager``, read at the batch's first task."""
        return bool(self.app.conf.task_always_eager)

    @cached_property
    def parent(self) -> Any:
        """The worker task the batch is published from, if any (read at its first task)."""
        return self.app.current_worker_task

    def add(self, built: Built) -> None:
        """Keep ``built`` for ``flush``."""
        self.built.append(built)

    def flush(self) -> list[str]:
        """Publish every collected message, wait once; the task ids, all confirmed, in order.

        Raises ``BatchRejected`` when the broker nacked or returned any (naming them, and
        the confirmed ones), ``BatchTimeout`` when confirms did not all come in time.
        """
        built, self.built = self.built, []
        if not built:
            return []
        connection = self.connection
        self._declare(built)
        if not all(b.ignore_result for b in built):
            # The rpc:// store declares the caller's reply queue; the SQL stores do nothing.
            producer = self.app.amqp.Producer(connection, auto_declare=False)
            self.app.backend.on_task_call(producer, built[0].task_id)
        try:
            result = publisher_of(connection).publish_batch(
                [b.message for b in built], check=False, report_timeout=True
            )
        except BaseException as error:
            for b in built:
                _end_send(b.send, error)
                b.send = None
            raise
        refused, returned = set(result.nacked), set(result.returned)
        confirmed = [i for i in result.confirmed if i not in returned]
        kept = set(confirmed)
        for b in built:
            send, b.send = b.send, None
            if b.task_id in kept:
                SENDING.set(send)  # ended by tracing's after_task_publish hook
                signals.after_task_publish.send(
                    sender=b.name, body=b.body, exchange=b.message.exchange,
                    routing_key=b.message.routing_key,
                )  # fmt: skip
            else:
                _end_send(send, BatchNotConfirmed(f"task {b.task_id} was not confirmed"))
        ids = [b.task_id for b in built]
        if refused or returned:
            queues = sorted({b.queue for b in built if b.task_id in refused | returned})
            raise BatchRejected(
                f"broker refused {len(refused)} and could not route {len(returned)} of "
                f"{len(built)} task(s) for {', '.join(queues)} (a full reject-publish queue "
                f"or no binding); {len(confirmed)} were confirmed. Refused: "
                f"{_some(i for i in ids if i in refused | returned)}",
                refused=[i for i in ids if i in refused],
                unroutable=[i for i in ids if i in returned],
                confirmed=confirmed,
                queue=queues[0] if queues else None,
            )
        if result.unconfirmed:
            raise BatchTimeout(
                f"broker confirmed {len(confirmed)} of {len(built)} task(s) within "
                f"{publisher_of(connection).confirm_timeout:g}s (is a memory or disk alarm "
                "blocking publishers?)",
                unconfirmed=result.unconfirmed,
                confirmed=confirmed,
            )
        return ids

    def _declare(self, built: list[Built]) -> None:
        # As Celery's producer: each task queue is declared once per connection.
        declared = _DECLARED.setdefault(self.connection, set())
        for b in built:
            if b.declare is not None and b.declare.name not in declared:
                maybe_declare(b.declare, self.connection.default_channel)
                declared.add(b.declare.name)


class BatchNotConfirmed(Exception):
    """A traced task message the broker refused, could not route or did not confirm in time."""


def _end_send(send: Any, error: BaseException) -> None:
    """End a traced send span, if any, as failed with ``error``."""
    if send is not None:
        send.end(error)


def check_size(name: str, args: Any, kwargs: Any) -> None:
    """Raise ``PayloadTooLarge`` when the task's JSON arguments exceed KITTY_MAX_MESSAGE_BYTES."""
    try:
        size = len(json_dumps([args or (), kwargs or {}]).encode())
    except Exception:  # Celery raises its own EncodeError for what JSON cannot carry
        return
    limit = get_settings().max_message_bytes
    if size > limit:
        raise PayloadTooLarge(
            f"task {name!r} arguments are {size:,} bytes as JSON, over the {limit:,}-byte "
            "limit (KITTY_MAX_MESSAGE_BYTES); nothing was sent"
        )


def trimmed_repr(value: Any, limit: int) -> str:
    """``repr(value)`` cut to ``limit`` characters, as Flower shows task arguments."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _some(ids: Iterator[str], limit: int = 20) -> str:
    """Up to ``limit`` ids, comma-separated, then how many more."""
    listed = list(ids)
    more = f" and {len(listed) - limit} more" if len(listed) > limit else ""
    return ", ".join(listed[:limit]) + more


@contextmanager
def batch_on(app: Celery, connection: Connection, producer: Any = None) -> Iterator[TaskBatch]:
    """Collect the app's KittyTask publishes into one batch; flushed when the block ends.

    Nothing is published when the block raises.
    """
    batch = TaskBatch(app, connection, producer)
    token = BATCH.set(batch)
    try:
        yield batch
    except BaseException:
        batch.built.clear()
        raise
    finally:
        BATCH.reset(token)
    batch.flush()


#: Options about how to publish or what to return, not part of the message.
_NOT_MESSAGE = frozenset(
    {"args", "kwargs", "producer", "connection", "add_to_parent", "result_cls"}
)


def send(task: Any, args: tuple[Any, ...], options: dict[str, Any]) -> Any:
    """Publish ``task.apply_async(*args, **options)`` directly; None to use Celery's path.

    Inside a batch (a group, ``submit_many``) the message is only collected; otherwise it
    is published and confirmed at once, on ``connection=`` or a connection of the app's pool.
    """
    app = task.app
    if len(args) > 2:  # more than Celery's (args, kwargs) positional pair
        return None
    task_args = args[0] if args else options.get("args")
    task_kwargs = args[1] if len(args) > 1 else options.get("kwargs")
    batch = BATCH.get()
    producer = options.get("producer")
    if batch is not None and batch.app is app and producer is batch.producer:
        own = {k: v for k, v in options.items() if k not in _NOT_MESSAGE}
        built = messages_of(app).build(task, task_args, task_kwargs, own, batch)
        if built is None:
            return None
        batch.add(built)
        return _result(task, built, options)
    if producer is not None:
        return None  # the caller's own producer: Celery's path publishes on it
    connection = options.get("connection")
    own = {k: v for k, v in options.items() if k not in _NOT_MESSAGE}
    built = messages_of(app).build(task, task_args, task_kwargs, own)
    if built is None:
        return None
    if connection is not None:
        _publish_one(app, connection, built, retry=options.get("retry", True))
    else:
        with app.pool.acquire(block=True) as pooled:
            _publish_one(app, pooled, built, retry=options.get("retry", True))
    return _result(task, built, options)


def _publish_one(app: Celery, connection: Connection, built: Built, *, retry: bool) -> None:
    """Publish one task message and wait for its confirm; one reconnect on a dropped link."""
    batch = TaskBatch(app, connection)
    batch.add(built)
    try:
        batch.flush()
    except connection.recoverable_connection_errors:
        if not retry:
            raise
        # A pooled connection the broker closed since its last use: reconnect once. A
        # message whose confirm was lost may then arrive twice, as with Celery's retry.
        publisher_of(connection).close()
        connection.collect()
        batch.add(built)
        batch.flush()


def _result(task: Any, built: Built, options: dict[str, Any]) -> Any:
    """The ``AsyncResult`` Celery's ``send_task`` returns, added to the parent's trail."""
    result = (options.get("result_cls") or task.AsyncResult)(built.task_id)
    result.ignored = built.ignore_result
    if options.get("add_to_parent", True):
        parent = task.app.current_worker_task
        if parent:
            parent.add_trail(result)
    return result
