"""RPCServer: serves a service's request queue with a pool of handler threads, replying at once."""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import amqp
from pydantic import BaseModel, ValidationError

from kitty_tasks.core import tracing
from kitty_tasks.core.connection import user_of
from kitty_tasks.core.dead_letters import QueueDeadLetters, oversized
from kitty_tasks.core.errors import ConfigurationError, MessageTooLarge
from kitty_tasks.core.metrics import RPC_REQUESTS, serve_metrics
from kitty_tasks.core.settings import get_settings
from kitty_tasks.core.shutdown import stop_on_signals
from kitty_tasks.core.topology import dlq_name
from rpc.declare import declare_service_queue
from rpc.errors import MalformedRequest, NotConnected, UnknownMethod
from rpc.link import DEFAULT_CONNECT_TIMEOUT, DEFAULT_HEARTBEAT, Link
from rpc.methods import MethodHandler, MethodRegistry
from rpc.protocol import (
    CONTENT_TYPE,
    H_METHOD,
    authenticated,
    deadline_passed,
    decode_request,
    encode_error,
    encode_result,
)

__all__ = ["DEFAULT_CONCURRENCY", "RPCServer"]

logger = logging.getLogger(__name__)

#: Handler threads (and prefetched requests) of a server unless told otherwise.
DEFAULT_CONCURRENCY = 4
#: Seconds ``stop`` waits for running handlers before closing the connection anyway.
DEFAULT_STOP_TIMEOUT = 30.0
#: Errors that are the caller's fault (counted as ``bad_request``, not logged as failures).
_CALLER_ERRORS = (MalformedRequest, MessageTooLarge, UnknownMethod, ValidationError)

LOG_HANDLER_FAILED = "%s: handler for method %s failed; replying with %s"
LOG_EXPIRED = "%s: skipping a request whose deadline passed (correlation id %s)"
LOG_DEAD_LETTERED = "%s: request without reply_to failed (%s); dead-lettered to %s"
LOG_ACK_FAILED = "%s: could not ack a request (%s); the broker will redeliver it"
LOG_REPLY_FAILED = "%s: could not send a reply (%s)"

F = TypeVar("F", bound=Callable[..., Any])


@dataclass(frozen=True)
class _Delivery:
    generation: int
    message: amqp.Message


class RPCServer:
    """Serves one service: a durable queue bound to ``kitty.rpc`` with the service name.

    ``concurrency`` handler threads run requests, with as many prefetched. A handler's
    exception, an unserialisable result and a malformed body are answered at once with an
    error reply (dead-lettered when the request has no ``reply_to``); a request whose deadline
    passed is dropped unexecuted. The server reconnects after a dropped connection.
    """

    def __init__(
        self,
        url: str | None = None,
        service: str = "",
        *,
        concurrency: int = DEFAULT_CONCURRENCY,
        prefetch: int | None = None,
        max_message_bytes: int | None = None,
        heartbeat: float = DEFAULT_HEARTBEAT,
        connect_timeout: float = DEFAULT_CONNECT_TIMEOUT,
    ) -> None:
        if not service:
            raise ConfigurationError(
                "an RPC server needs a service name, e.g. RPCServer(url, 'math.rpc')"
            )
        if concurrency < 1:
            raise ConfigurationError(f"concurrency must be at least 1, not {concurrency}")
        if prefetch is not None and prefetch < concurrency:
            raise ConfigurationError(
                f"prefetch ({prefetch}) must be at least concurrency ({concurrency})"
            )
        settings = get_settings()
        self.url = url or settings.rabbitmq_url
        #: The broker user, sent as ``user_id`` (None: the broker's default user).
        self.user_id = user_of(self.url)
        self.service = service
        self.concurrency = concurrency
        self.prefetch = prefetch or concurrency
        self.max_message_bytes = max_message_bytes or settings.max_message_bytes
        self.metrics_port = settings.metrics_port
        self._link = Link(
            self.url,
            name=f"rpc-server {service}",
            heartbeat=heartbeat,
            connect_timeout=connect_timeout,
        )
        self._methods = MethodRegistry(service)
        self._work: queue.SimpleQueue[_Delivery | None] = queue.SimpleQueue()
        self._workers: list[threading.Thread] = []
        self._stopping = threading.Event()
        self._stopped = threading.Event()
        self._stopped.set()
        self._stop_timeout = DEFAULT_STOP_TIMEOUT
        self._consumer_tag: str | None = None
        self._dead_letters = QueueDeadLetters(self.url, service)

    # -- handlers ------------------------------------------------------------------------

    def register_handler(
        self,
        fn: F,
        *,
        request_model: type[BaseModel] | None = None,
        response_model: type[BaseModel] | None = None,
    ) -> F:
        """Serve ``fn(request) -> result`` for calls that name no method (the guide's form)."""
        self._methods.add(None, MethodHandler(fn, request_model, response_model))
        return fn

    def add_method(
        self,
        name: str,
        fn: Callable[[Any], Any],
        *,
        request_model: type[BaseModel] | None = None,
        response_model: type[BaseModel] | None = None,
    ) -> None:
        """Serve ``fn`` for calls with ``method=name``."""
        if not name:
            raise ConfigurationError("a method needs a name; use register_handler for the default")
        self._methods.add(name, MethodHandler(fn, request_model, response_model))

    def method(
        self,
        name: str,
        *,
        request_model: type[BaseModel] | None = None,
        response_model: type[BaseModel] | None = None,
    ) -> Callable[[F], F]:
        """Decorator form of ``add_method``: ``@server.method("add")``."""

        def register(fn: F) -> F:
            self.add_method(name, fn, request_model=request_model, response_model=response_model)
            return fn

        return register

    # -- lifecycle -----------------------------------------------------------------------

    def connect(self) -> None:
        """Connect and declare the service's queue, its binding and its DLQ."""
        if self._link.channel is not None:
            return
        try:
            declare_service_queue(self._link.open(), self.service)
        except Exception as err:
            self._link.close(clean=False)
            raise NotConnected(f"cannot set up RPC service {self.service!r}: {err}") from err

    def start(self) -> None:
        """Serve requests until ``stop()`` (or Ctrl-C); blocking. Reconnects after a drop."""
        self._stopped.clear()
        self._stopping.clear()
        try:
            self.connect()
            self._consume(self._link.channel)
            self._link.ready.set()
            self._workers = [
                threading.Thread(
                    target=self._work_loop, name=f"rpc-{self.service}-{i}", daemon=True
                )
                for i in range(self.concurrency)
            ]
            for worker in self._workers:
                worker.start()
            if self.metrics_port is not None:
                serve_metrics(self.metrics_port)
            with stop_on_signals(self._request_stop):
                self._link.serve(self._stopping, setup=self._setup, on_lost=self._on_lost)
        except KeyboardInterrupt:  # Ctrl-C before the handlers were installed
            self._stopping.set()
        finally:
            self._shutdown()

    def stop(self, timeout: float | None = None) -> None:
        """Stop consuming, let running handlers finish (up to ``timeout``), close; thread-safe."""
        if timeout is not None:
            self._stop_timeout = timeout
        if self._stopped.is_set():
            self._link.dispose()  # connected but never started
            return
        self._request_stop()
        if threading.current_thread() not in self._workers:
            self._stopped.wait(self._stop_timeout + 5)

    def _request_stop(self) -> None:
        """Flag the stop and wake the serving loop; returns at once (safe in a signal handler)."""
        self._stopping.set()
        self._link.wake()

    def wait_ready(self, timeout: float | None = None) -> bool:
        """Wait until the server consumes its queue (after ``start`` or a reconnect)."""
        return self._link.ready.wait(timeout)

    @property
    def running(self) -> bool:
        """True from ``start()`` until the server has shut down."""
        return not self._stopped.is_set()

    # -- connection ----------------------------------------------------------------------

    def _consume(self, channel: amqp.Channel | None) -> None:
        if channel is None:
            raise NotConnected("the server lost its connection before consuming")
        channel.basic_qos(0, self.prefetch, False)
        self._consumer_tag = channel.basic_consume(
            self.service, no_ack=False, callback=self._on_request
        )

    def _setup(self, channel: amqp.Channel) -> None:
        declare_service_queue(channel, self.service)
        self._consume(channel)

    def _on_lost(self, err: BaseException) -> None:
        # Unacked requests go back to the queue with the connection; queued copies are stale
        # (their generation no longer matches) and are skipped by the workers.
        logger.debug("%s: connection lost: %s", self.service, err)

    def _on_request(self, message: amqp.Message) -> None:
        self._work.put(_Delivery(self._link.generation, message))

    def _shutdown(self) -> None:
        channel, tag = self._link.channel, self._consumer_tag
        if channel is not None and tag is not None:
            # New requests go to other servers while the running handlers finish.
            try:
                channel.basic_cancel(tag)
            except Exception as err:
                logger.debug("%s: basic.cancel failed: %s", self.service, err)
        for _ in self._workers:
            self._work.put(None)
        # One deadline for all: stop()'s timeout bounds the whole wait, not each thread's.
        deadline = time.monotonic() + self._stop_timeout
        for worker in self._workers:
            worker.join(max(0.0, deadline - time.monotonic()))
        self._workers = []
        # Requests prefetched but never started are not acked: closing requeues them.
        self._link.dispose()
        self._dead_letters.close()
        while not self._work.empty():
            self._work.get_nowait()
        self._stopped.set()

    # -- handler threads -----------------------------------------------------------------

    def _work_loop(self) -> None:
        while True:
            delivery = self._work.get()
            if delivery is None:
                return
            if self._stopping.is_set() or delivery.generation != self._link.generation:
                continue  # the broker requeues it with the closing (or closed) channel
            try:
                self._process(delivery)
            except Exception:
                logger.exception("%s: unexpected failure while processing a request", self.service)

    def _process(self, delivery: _Delivery) -> None:
        process = self._trace(delivery.message)
        try:
            self._serve(delivery)
        finally:
            process.end()

    def _trace(self, message: amqp.Message) -> tracing.Process:
        """The ``process`` span of a request: a child of the caller's span (it waits for us)."""
        if not tracing.enabled():
            return tracing.NO_PROCESS
        properties = message.properties
        delivery = message.delivery_info or {}
        return tracing.start_process(
            properties.get("application_headers"),
            exchange=str(delivery.get("exchange") or ""),
            routing_key=str(delivery.get("routing_key") or ""),
            queue=self.service,
            message_id=properties.get("message_id"),
            conversation_id=properties.get("correlation_id"),
        )

    def _serve(self, delivery: _Delivery) -> None:
        message = delivery.message
        properties = message.properties
        headers = properties.get("application_headers") or {}
        reply_to = properties.get("reply_to")
        method = headers.get(H_METHOD)
        if deadline_passed(headers):
            logger.info(LOG_EXPIRED, self.service, properties.get("correlation_id"))
            self._count(method, "expired")
            self._ack(delivery)
            return
        try:
            too_large = oversized(message.body, self.max_message_bytes)
            if too_large is not None:
                raise too_large  # before decoding: a huge body costs nothing more
            payload = decode_request(message.body)
            handler = self._methods.find(method)
            body = encode_result(handler.invoke(payload), max_bytes=self.max_message_bytes)
            outcome = "ok"
        except Exception as err:
            tracing.failed(err)
            if not reply_to:
                self._dead_letter(delivery, err)
                return
            if isinstance(err, _CALLER_ERRORS):
                outcome = "bad_request"
            else:
                outcome = "error"
                logger.warning(
                    LOG_HANDLER_FAILED, self.service, method, type(err).__name__, exc_info=True
                )
            body = encode_error(type(err).__name__, str(err))
        self._count(method, outcome)
        reply = None
        if reply_to:
            reply = amqp.Message(
                body,
                content_type=CONTENT_TYPE,
                correlation_id=properties.get("correlation_id"),
                **authenticated(self.user_id),
            )
        # After a reconnect the reply still helps a caller that waits, but the ack cannot be
        # sent: the broker requeued the request with the old channel.
        tag = message.delivery_tag if delivery.generation == self._link.generation else None
        sending = (
            tracing.NO_SEND
            if reply is None
            else tracing.start_send(
                "", reply_to or "", conversation_id=properties.get("correlation_id")
            )
        )
        try:
            self._link.reply_and_ack(reply, reply_to or "", tag)
        except Exception as err:
            sending.end(err)
            logger.warning(LOG_REPLY_FAILED, self.service, err)
        else:
            sending.end()

    def _ack(self, delivery: _Delivery) -> None:
        channel = self._link.channel
        if channel is None or delivery.generation != self._link.generation:
            return  # its channel is gone, so the broker has requeued it already
        try:
            channel.basic_ack(delivery.message.delivery_tag)
        except Exception as err:
            logger.warning(LOG_ACK_FAILED, self.service, err)

    def _dead_letter(self, delivery: _Delivery, err: Exception) -> None:
        """Dead-letter a failed request that no caller waits for, by the core's failure policy."""
        method = (delivery.message.properties.get("application_headers") or {}).get(H_METHOD)
        if self._dead_letters.dead_letter(delivery.message, err).ack:
            # A confirmed copy with the x-kitty-error-* headers is in <service>.dlq.
            logger.warning(
                LOG_DEAD_LETTERED, self.service, type(err).__name__, dlq_name(self.service)
            )
            self._count(method, "dead_lettered")
            self._ack(delivery)
        else:
            # No confirmed copy (the policy logged why): the broker dead-letters the request
            # itself, with x-death, so it is never acked away uncopied.
            self._reject(delivery)

    def _reject(self, delivery: _Delivery) -> None:
        channel = self._link.channel
        if channel is None or delivery.generation != self._link.generation:
            return  # its channel is gone, so the broker has requeued it already
        try:
            channel.basic_reject(delivery.message.delivery_tag, requeue=False)
        except Exception as err:
            logger.warning(LOG_ACK_FAILED, self.service, err)

    def _count(self, method: object, outcome: str) -> None:
        """Count a handled request under its method's label."""
        RPC_REQUESTS.labels(self.service, self._methods.label(method), outcome).inc()
