"""RPCClient: calls over direct reply-to, many in flight on one connection, with typed errors."""

from __future__ import annotations

import heapq
import itertools
import logging
import threading
import time
import urllib.parse
import uuid
from concurrent.futures import Future, InvalidStateError
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

import amqp
from pydantic import BaseModel

from kitty_tasks.core.metrics import RPC_LATENCY
from kitty_tasks.core.settings import get_settings
from kitty_tasks.core.topology import RPC_EXCHANGE, TOPOLOGY
from rpc.errors import (
    BadReply,
    ConnectionLost,
    NoRoute,
    NotConnected,
    RemoteError,
    RPCError,
    RPCTimeout,
)
from rpc.link import DEFAULT_CONNECT_TIMEOUT, DEFAULT_HEARTBEAT, Link
from rpc.protocol import (
    CONTENT_TYPE,
    DEFAULT_METHOD_LABEL,
    REPLY_TO,
    decode_reply,
    encode_payload,
    expiration_ms,
    request_headers,
)

__all__ = ["DEFAULT_TIMEOUT", "RPCClient"]

logger = logging.getLogger(__name__)

#: Seconds a call waits for its reply unless told otherwise (the KITT guide's default).
DEFAULT_TIMEOUT = 30.0
#: Extra seconds ``call`` waits beyond the timeout for the reader to report it, a safety net only.
_TIMEOUT_GRACE = 1.0

LOG_LATE = "discarding a reply nobody waits for (late or unknown correlation id %s)"
LOG_DISCONNECTED = "client disconnected"


@dataclass(order=True)
class _Call:
    """One call in flight: ordered by deadline for the timeout heap."""

    deadline: float
    correlation_id: str = field(compare=False)
    service: str = field(compare=False)
    method: str | None = field(compare=False)
    started: float = field(compare=False)
    timeout: float = field(compare=False)
    future: Future[Any] = field(compare=False)


class RPCClient:
    """Calls RPC services; thread-safe, one connection, any number of calls in flight.

    ``call`` blocks for the result; ``call_async`` returns a ``concurrent.futures.Future``.
    Replies come over RabbitMQ's direct reply-to; one background thread reads them, matches
    them to their calls, fails calls at their deadline, and reconnects after a dropped
    connection (calls in flight at the drop fail with ``ConnectionLost``).
    """

    def __init__(
        self,
        url: str | None = None,
        *,
        max_message_bytes: int | None = None,
        heartbeat: float = DEFAULT_HEARTBEAT,
        connect_timeout: float = DEFAULT_CONNECT_TIMEOUT,
    ) -> None:
        settings = get_settings()
        self.url = url or settings.rabbitmq_url
        self.max_message_bytes = max_message_bytes or settings.max_message_bytes
        self._link = Link(
            self.url, name="rpc-client", heartbeat=heartbeat, connect_timeout=connect_timeout
        )
        self._lock = threading.Lock()  # guards _calls, _deadlines, _state changes
        self._calls: dict[str, _Call] = {}
        self._deadlines: list[_Call] = []
        self._planned_wake = float("inf")
        self._stopping = threading.Event()
        self._reader: threading.Thread | None = None
        self._ids = itertools.count()
        self._prefix = uuid.uuid4().hex[:12]
        self._histograms: dict[tuple[str, str, str], Any] = {}

    # -- lifecycle -----------------------------------------------------------------------

    def connect(self) -> None:
        """Connect and start the reply reader; raises ``NotConnected`` when the broker is down."""
        with self._lock:
            if self._reader is not None:
                return
            self._stopping.clear()
            try:
                self._setup(self._link.open())
            except Exception as err:
                self._link.close(clean=False)
                raise NotConnected(
                    f"cannot connect the RPC client to {_safe(self.url)}: {err}"
                ) from err
            self._link.ready.set()
            self._reader = threading.Thread(
                target=self._read_loop, name="rpc-client-reader", daemon=True
            )
            self._reader.start()

    def disconnect(self) -> None:
        """Fail calls in flight with ``NotConnected``, stop the reader, close the connection."""
        with self._lock:
            reader, self._reader = self._reader, None
        if reader is None:
            return
        self._stopping.set()
        self._link.wake()
        reader.join()
        self._link.dispose()
        self._fail_all(NotConnected(LOG_DISCONNECTED))

    close = disconnect

    def __enter__(self) -> RPCClient:
        self.connect()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.disconnect()

    @property
    def connected(self) -> bool:
        """True while the client has a working connection (False while reconnecting)."""
        return self._reader is not None and self._link.ready.is_set()

    # -- calls ---------------------------------------------------------------------------

    def call(
        self,
        service: str,
        payload: dict[str, Any] | BaseModel,
        timeout: float = DEFAULT_TIMEOUT,
        method: str | None = None,
    ) -> Any:
        """Call ``service`` (its ``method``, or its default handler) and return the result.

        Raises:
            RPCTimeout: no reply within ``timeout`` seconds.
            NoRoute: no server queue is bound for ``service``.
            RemoteError: the handler failed; ``.type`` and ``.message`` say how.
            ConnectionLost: the connection dropped while waiting.
            InvalidPayload: ``payload`` is not a JSON object or is too large (nothing sent).
        """
        future = self.call_async(service, payload, timeout=timeout, method=method)
        try:
            return future.result(timeout + _TIMEOUT_GRACE)
        except FutureTimeout as err:
            # Only reached if the reader thread could not report the timeout itself.
            self._forget(future)
            raise RPCTimeout(
                _timeout_text(service, method, timeout), service=service, method=method
            ) from err

    def call_async(
        self,
        service: str,
        payload: dict[str, Any] | BaseModel,
        timeout: float = DEFAULT_TIMEOUT,
        method: str | None = None,
    ) -> Future[Any]:
        """Send a call and return a Future of its result (or of the errors ``call`` raises)."""
        body = encode_payload(payload, max_bytes=self.max_message_bytes)
        expiration = expiration_ms(timeout)
        if not service:
            raise ValueError("an RPC call needs a service name")
        if self._reader is None:
            raise NotConnected("the RPC client is not connected; call connect() first")
        started = time.monotonic()
        deadline = started + timeout
        if not self._link.ready.wait(timeout):
            raise NotConnected(
                f"no broker connection within {timeout:g} s (the client keeps reconnecting)"
            )
        correlation_id = f"{self._prefix}.{next(self._ids)}"
        future: Future[Any] = Future()
        future.set_running_or_notify_cancel()
        entry = _Call(deadline, correlation_id, service, method, started, timeout, future)
        wake = False
        with self._lock:
            self._calls[correlation_id] = entry
            heapq.heappush(self._deadlines, entry)
            if deadline < self._planned_wake:
                self._planned_wake = deadline
                wake = True
        if wake:
            self._link.wake()
        message = amqp.Message(
            body,
            content_type=CONTENT_TYPE,
            correlation_id=correlation_id,
            reply_to=REPLY_TO,
            expiration=expiration,
            delivery_mode=1,  # a request is worthless after its timeout; skip the disk
            application_headers=request_headers(method, timeout),
        )
        try:
            self._link.publish(message, RPC_EXCHANGE, service, mandatory=True)
        except Exception as err:
            self._pop(correlation_id)
            self._link.wake()
            raise ConnectionLost(
                f"could not send the call to {service!r}: the broker connection failed "
                f"({type(err).__name__}: {err}); the request was not sent"
            ) from err
        return future

    # -- reader thread -------------------------------------------------------------------

    def _setup(self, channel: amqp.Channel) -> None:
        spec = TOPOLOGY.exchange(RPC_EXCHANGE)
        # Declared so that a fresh broker works too; publishing to a missing exchange
        # would close the channel and fail every call in flight.
        channel.exchange_declare(spec.name, spec.type, durable=spec.durable, auto_delete=False)
        channel.basic_consume(REPLY_TO, no_ack=True, callback=self._on_reply)
        channel.events["basic_return"].add(self._on_return)

    def _read_loop(self) -> None:
        self._link.serve(
            self._stopping, setup=self._setup, on_lost=self._on_lost, on_idle=self._expire
        )

    def _on_reply(self, message: amqp.Message) -> None:
        entry = self._pop(message.properties.get("correlation_id", ""))
        if entry is None:
            logger.debug(LOG_LATE, message.properties.get("correlation_id"))
            return
        try:
            reply = decode_reply(message.body)
        except BadReply as err:
            self._settle(entry, "error", error=err)
            return
        if reply.ok:
            self._settle(entry, "ok", result=reply.result)
        else:
            error = RemoteError(
                reply.error_type, reply.error_message, service=entry.service, method=entry.method
            )
            self._settle(entry, "remote_error", error=error)

    def _on_return(self, exc: Exception, exchange: str, routing_key: str, message: Any) -> None:
        entry = self._pop(message.properties.get("correlation_id", ""))
        if entry is None:
            return
        error = NoRoute(
            f"no RPC server is bound for service {entry.service!r} on exchange {exchange!r} "
            f"(the broker returned the request: {exc})",
            service=entry.service,
        )
        self._settle(entry, "no_route", error=error)

    def _on_lost(self, err: BaseException) -> None:
        self._fail_all(
            ConnectionLost(
                f"the broker connection dropped while waiting for the reply "
                f"({type(err).__name__}: {err}); the request may or may not have run"
            )
        )

    def _expire(self) -> float | None:
        """Fail calls whose deadline passed; return the seconds until the next deadline."""
        now = time.monotonic()
        expired: list[_Call] = []
        with self._lock:
            while self._deadlines:
                head = self._deadlines[0]
                if head.correlation_id not in self._calls:
                    heapq.heappop(self._deadlines)  # already answered
                elif head.deadline <= now:
                    heapq.heappop(self._deadlines)
                    del self._calls[head.correlation_id]
                    expired.append(head)
                else:
                    break
            self._planned_wake = self._deadlines[0].deadline if self._deadlines else float("inf")
        for entry in expired:
            error = RPCTimeout(
                _timeout_text(entry.service, entry.method, entry.timeout),
                service=entry.service,
                method=entry.method,
            )
            self._settle(entry, "timeout", error=error)
        if self._planned_wake == float("inf"):
            return None
        return max(0.0, self._planned_wake - now)

    # -- bookkeeping ---------------------------------------------------------------------

    def _pop(self, correlation_id: str) -> _Call | None:
        with self._lock:
            return self._calls.pop(correlation_id, None)

    def _forget(self, future: Future[Any]) -> None:
        with self._lock:
            for key, entry in list(self._calls.items()):
                if entry.future is future:
                    del self._calls[key]

    def _fail_all(self, error: RPCError) -> None:
        with self._lock:
            entries = list(self._calls.values())
            self._calls.clear()
            self._deadlines.clear()
            self._planned_wake = float("inf")
        for entry in entries:
            self._settle(entry, "error", error=error)

    def _settle(
        self,
        entry: _Call,
        outcome: str,
        *,
        result: Any = None,
        error: BaseException | None = None,
    ) -> None:
        try:
            if error is None:
                entry.future.set_result(result)
            else:
                entry.future.set_exception(error)
        except InvalidStateError:
            return  # the caller cancelled it
        key = (entry.service, entry.method or DEFAULT_METHOD_LABEL, outcome)
        histogram = self._histograms.get(key)
        if histogram is None:
            histogram = self._histograms[key] = RPC_LATENCY.labels(*key)
        histogram.observe(time.monotonic() - entry.started)


def _timeout_text(service: str, method: str | None, timeout: float) -> str:
    target = f"{service!r} method {method!r}" if method else repr(service)
    return f"no reply from {target} within {timeout:g} s"


def _safe(url: str) -> str:
    """``url`` without its password, for error messages."""
    parsed = urllib.parse.urlsplit(url)
    if parsed.password is None:
        return url
    netloc = parsed.netloc.replace(f":{parsed.password}@", ":***@")
    return urllib.parse.urlunsplit(parsed._replace(netloc=netloc))
