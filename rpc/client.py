"""RPCClient: calls over direct reply-to, many in flight on one connection, with typed errors."""

from __future__ import annotations

import asyncio
import itertools
import threading
import time
import uuid
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from types import TracebackType
from typing import Any

import amqp
from pydantic import BaseModel

from kitty_tasks.core import tracing
from kitty_tasks.core.connection import safe_url, user_of
from kitty_tasks.core.errors import BrokerUnavailable
from kitty_tasks.core.offload import Offload
from kitty_tasks.core.settings import get_settings
from kitty_tasks.core.topology import RPC_EXCHANGE
from rpc.calls import Call, CallsInFlight, timeout_text, unavailable_text
from rpc.declare import declare_exchanges
from rpc.errors import ConnectionLost, NotConnected, RPCTimeout, ServiceUnavailable
from rpc.link import DEFAULT_CONNECT_TIMEOUT, DEFAULT_HEARTBEAT, Link
from rpc.presence import WATCH_INTERVAL, ServicePresence
from rpc.protocol import (
    CONTENT_TYPE,
    REPLY_TO,
    authenticated,
    encode_payload,
    expiration_ms,
    request_headers,
)

__all__ = ["DEFAULT_TIMEOUT", "RPCClient"]

#: Seconds a call waits for its reply unless told otherwise (the KITT guide's default).
DEFAULT_TIMEOUT = 30.0
#: Extra seconds ``call`` waits beyond the timeout for the reader to report it, a safety net only.
_TIMEOUT_GRACE = 1.0
#: Threads that send ``acall`` requests: a send is one socket write, so a few serve any load.
SEND_THREADS = 4

LOG_DISCONNECTED = "client disconnected"


class RPCClient:
    """Calls RPC services; thread-safe, one connection, any number of calls in flight.

    ``call`` blocks for the result; ``call_async`` returns a ``concurrent.futures.Future``;
    ``await acall(...)`` is ``call`` for coroutines.
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
        #: The broker user, sent as ``user_id`` (None: the broker's default user).
        self.user_id = user_of(self.url)
        self.max_message_bytes = max_message_bytes or settings.max_message_bytes
        self._link = Link(
            self.url, name="rpc-client", heartbeat=heartbeat, connect_timeout=connect_timeout
        )
        self._lock = threading.Lock()  # guards connect and disconnect
        self._calls = CallsInFlight()
        self._presence = ServicePresence(self._link.open_channel)
        self._next_watch = 0.0
        self._stopping = threading.Event()
        self._reader: threading.Thread | None = None
        self._ids = itertools.count()
        self._prefix = uuid.uuid4().hex[:12]
        self._senders = Offload("rpc-send", SEND_THREADS)

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
                # A BrokerUnavailable names the (redacted) URL itself; a setup failure does not.
                where = "" if isinstance(err, BrokerUnavailable) else f" to {safe_url(self.url)}"
                raise NotConnected(f"cannot connect the RPC client{where}: {err}") from err
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
        self._presence.fail_pending(NotConnected(LOG_DISCONNECTED))
        self._calls.fail_all(NotConnected(LOG_DISCONNECTED))
        self._senders.shutdown()

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

    @property
    def in_flight(self) -> int:
        """The calls sent that await their reply (or their timeout)."""
        return len(self._calls)

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
            ServiceUnavailable: no server consumes ``service``'s queue, or its server
                stopped while the call waited (``NoRoute`` is one kind of it).
            RemoteError: the handler failed; ``.type`` and ``.message`` say how.
            ConnectionLost: the connection dropped while waiting.
            InvalidPayload: ``payload`` is not a JSON object or is too large (nothing sent).
        """
        future = self.call_async(service, payload, timeout=timeout, method=method)
        try:
            return future.result(timeout + _TIMEOUT_GRACE)
        except FutureTimeout as err:
            # Only reached if the reader thread could not report the timeout itself.
            self._calls.forget(future)
            raise RPCTimeout(
                timeout_text(service, method, timeout), service=service, method=method
            ) from err

    def call_async(
        self,
        service: str,
        payload: dict[str, Any] | BaseModel,
        timeout: float = DEFAULT_TIMEOUT,
        method: str | None = None,
    ) -> Future[Any]:
        """Send a call and return a Future of its result (or of the errors ``call`` raises)."""
        return self._send(service, payload, timeout, method).future

    async def acall(
        self,
        service: str,
        payload: dict[str, Any] | BaseModel,
        timeout: float = DEFAULT_TIMEOUT,
        method: str | None = None,
    ) -> Any:
        """``call`` for coroutines: the same result and errors, never blocking the event loop.

        Cancelling the awaiting task (or an ``asyncio.wait_for`` around it) forgets the call:
        it leaves the calls in flight, and a reply that comes later is discarded.
        """
        # Waiting for the reply holds no thread: the reader thread settles the call's Future
        # and wrap_future hands that to this loop with call_soon_threadsafe, so any number of
        # calls wait on the one reader. Only the send runs on a thread (SEND_THREADS of them
        # at most): it waits while the client reconnects, and a broker that stops reading
        # the socket (a memory alarm) would stall the loop in sendall. Sending on the loop
        # itself measured no better: the heartbeat's lateness was the same within the noise.
        sending = self._senders.submit(self._send, service, payload, timeout, method)
        try:
            call = await asyncio.wrap_future(sending)
        except asyncio.CancelledError:
            sending.add_done_callback(self._abandon_sent)  # it may be sent even so
            raise
        try:
            return await asyncio.wait_for(
                asyncio.wrap_future(call.future), timeout + _TIMEOUT_GRACE
            )
        except asyncio.CancelledError:
            self._calls.abandon(call.correlation_id)
            raise
        except TimeoutError as err:
            # Only reached if the reader thread could not report the timeout itself.
            self._calls.forget(call.future)
            raise RPCTimeout(
                timeout_text(service, method, timeout), service=service, method=method
            ) from err

    def _abandon_sent(self, sending: Future[Call]) -> None:
        """Forget a call whose sender was cancelled while it was being sent."""
        if not sending.cancelled() and sending.exception() is None:
            self._calls.abandon(sending.result().correlation_id)

    def _send(
        self,
        service: str,
        payload: dict[str, Any] | BaseModel,
        timeout: float,
        method: str | None,
    ) -> Call:
        """Publish one request and track it; the call's Future ends with its outcome."""
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
        call = Call(
            deadline,
            correlation_id,
            service,
            method,
            started,
            timeout,
            future,
            trace=tracing.start_send(
                RPC_EXCHANGE, service, conversation_id=correlation_id, client=True
            ),
        )
        if not self._presence.fresh(service, started) and not self._served(call):
            return call  # settled already: its Future holds the error
        if self._calls.add(call):
            self._link.wake()  # the reader must fail this call before any other
        message = amqp.Message(
            body,
            content_type=CONTENT_TYPE,
            correlation_id=correlation_id,
            reply_to=REPLY_TO,
            expiration=expiration,
            delivery_mode=1,  # a request is worthless after its timeout; skip the disk
            application_headers={**request_headers(method, timeout), **call.trace.headers},
            **authenticated(self.user_id),
        )
        try:
            self._link.publish(message, RPC_EXCHANGE, service, mandatory=True)
        except Exception as err:
            self._calls.pop(correlation_id)
            self._link.wake()
            call.trace.end(err)
            raise ConnectionLost(
                f"could not send the call to {service!r}: the broker connection failed "
                f"({type(err).__name__}: {err}); the request was not sent"
            ) from err
        return call

    def _served(self, call: Call) -> bool:
        """Check that a server consumes ``call``'s service before sending; else settle the call.

        A request sent to a queue nobody consumes would wait out its timeout there, then
        expire into the service's DLQ. A missing queue is left to the mandatory publish,
        whose return raises ``NoRoute`` as before.
        """
        check = self._presence.request(call.service)
        self._link.wake()  # the reader thread does the check
        try:
            stat = check.result(max(0.0, call.deadline - time.monotonic()))
        except FutureTimeout:
            text = timeout_text(call.service, call.method, call.timeout)
            error: Exception = RPCTimeout(text, service=call.service, method=call.method)
            self._calls.settle(call, "timeout", error=error)
            return False
        except Exception as err:
            self._calls.settle(call, "error", error=err)
            return False
        if stat is not None and stat.consumers == 0:
            error = ServiceUnavailable(
                unavailable_text(call.service, exists=True) + "; the request was not sent",
                service=call.service,
            )
            self._calls.settle(call, "unavailable", error=error)
            return False
        return True

    # -- reader thread -------------------------------------------------------------------

    def _setup(self, channel: amqp.Channel) -> None:
        # Declared so that a fresh broker works too; publishing to a missing exchange
        # would close the channel and fail every call in flight.
        declare_exchanges(channel, RPC_EXCHANGE)
        channel.basic_consume(REPLY_TO, no_ack=True, callback=self._calls.on_reply)
        channel.events["basic_return"].add(self._calls.on_return)

    def _read_loop(self) -> None:
        self._link.serve(
            self._stopping, setup=self._setup, on_lost=self._on_lost, on_idle=self._on_idle
        )

    def _on_idle(self) -> float | None:
        """Answer presence checks, watch the services calls wait for, fail expired calls."""
        self._presence.run_pending()
        now = time.monotonic()
        if now >= self._next_watch:
            self._next_watch = now + WATCH_INTERVAL
            self._watch(now)
        wanted = self._calls.expire(now)
        if len(self._calls):
            until_watch = max(0.0, self._next_watch - now)
            wanted = until_watch if wanted is None else min(wanted, until_watch)
        return wanted

    def _watch(self, now: float) -> None:
        """Fail the calls whose requests wait in a queue no server consumes, taking them back."""
        # Only calls older than one interval are watched, so fast calls never cost a check.
        for service in self._calls.services_waiting(now - WATCH_INTERVAL):
            stat = self._presence.stat(service)
            if stat is None:  # the queue was deleted, and the requests with it
                self._abandon(self._calls.to_service(service), exists=False)
            elif stat.consumers == 0 and stat.ready:
                # Only requests found in the queue are given up: one that a stopping server
                # still holds may yet be answered, and comes back here if it is not. Taken
                # back, they do not expire into the service's DLQ.
                waiting = {c.correlation_id: c for c in self._calls.to_service(service)}
                found = self._presence.reclaim(service, waiting.keys())
                self._abandon([waiting[cid] for cid in found], exists=True)

    def _abandon(self, calls: list[Call], *, exists: bool) -> None:
        """Fail ``calls`` with ``ServiceUnavailable``; their requests are not in the broker."""
        for call in calls:
            if self._calls.pop(call.correlation_id) is None:
                continue  # answered meanwhile
            text = unavailable_text(call.service, exists=exists)
            error = ServiceUnavailable(f"{text}; the call was abandoned", service=call.service)
            self._calls.settle(call, "unavailable", error=error)

    def _on_lost(self, err: BaseException) -> None:
        self._presence.fail_pending(ConnectionLost(f"the broker connection dropped ({err})"))
        self._calls.fail_all(
            ConnectionLost(
                f"the broker connection dropped while waiting for the reply "
                f"({type(err).__name__}: {err}); the request may or may not have run"
            )
        )
