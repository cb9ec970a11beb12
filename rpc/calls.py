"""A client's calls in flight: matched to replies by correlation id, failed at their deadline."""

from __future__ import annotations

import heapq
import logging
import threading
import time
from concurrent.futures import CancelledError as CallCancelled
from concurrent.futures import Future, InvalidStateError
from dataclasses import dataclass, field
from typing import Any

import amqp

from kitty_tasks.core import tracing
from kitty_tasks.core.metrics import RPC_LATENCY
from rpc.errors import BadReply, NoRoute, RemoteError, RPCError, RPCTimeout
from rpc.protocol import DEFAULT_METHOD_LABEL, decode_reply

__all__ = ["Call", "CallsInFlight", "timeout_text", "unavailable_text"]

logger = logging.getLogger(__name__)

#: Answered calls the deadline heap may hold beyond twice the calls in flight before a sweep.
HEAP_SLACK = 64

LOG_ABANDONED = "call %s to %r cancelled by its caller; a late reply will be discarded"
LOG_LATE = "discarding a reply nobody waits for (late or unknown correlation id %s)"


@dataclass(order=True)
class Call:
    """One call in flight: ordered by deadline for the timeout heap."""

    deadline: float
    correlation_id: str = field(compare=False)
    service: str = field(compare=False)
    method: str | None = field(compare=False)
    started: float = field(compare=False)
    timeout: float = field(compare=False)
    future: Future[Any] = field(compare=False)
    #: The call's ``send`` span (kind CLIENT), ended when the call settles.
    trace: tracing.Send = field(default=tracing.NO_SEND, compare=False)


class CallsInFlight:
    """The calls awaiting a reply, by correlation id; each ends once, in its Future. Thread-safe."""

    # A reply, a return, a deadline, a drop or a disconnect removes a call; a reply for a
    # call that is not here any more (it timed out, or was never ours) is discarded.

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._calls: dict[str, Call] = {}
        #: Deadlines, earliest first; an answered call leaves it lazily (at its deadline or
        #: the next sweep), which keeps a reply's cost at one dict lookup.
        self._deadlines: list[Call] = []
        self._next_wake = float("inf")
        self._histograms: dict[tuple[str, str, str], Any] = {}

    def __len__(self) -> int:
        with self._lock:
            return len(self._calls)

    @property
    def deadlines_held(self) -> int:
        """Entries in the deadline heap, answered ones included (bounded by the sweep)."""
        with self._lock:
            return len(self._deadlines)

    def add(self, call: Call) -> bool:
        """Track ``call``; True when its deadline comes first, so the reader must wake for it."""
        with self._lock:
            self._calls[call.correlation_id] = call
            heapq.heappush(self._deadlines, call)
            if call.deadline < self._next_wake:
                self._next_wake = call.deadline
                return True
            return False

    def pop(self, correlation_id: object) -> Call | None:
        """Stop tracking the call with ``correlation_id`` and return it (None if not tracked)."""
        if not isinstance(correlation_id, str):
            return None
        with self._lock:
            call = self._calls.pop(correlation_id, None)
            if len(self._deadlines) > 2 * len(self._calls) + HEAP_SLACK:
                # Long timeouts answered fast would otherwise pile up here until their deadlines.
                self._deadlines = [c for c in self._deadlines if c.correlation_id in self._calls]
                heapq.heapify(self._deadlines)
            return call

    def abandon(self, correlation_id: str) -> bool:
        """Stop tracking a call its caller gave up on (cancelled); a late reply is discarded.

        Recorded under the outcome ``cancelled``; False when the call had ended already.
        """
        call = self.pop(correlation_id)
        if call is None:
            return False
        logger.debug(LOG_ABANDONED, correlation_id, call.service)
        self.settle(call, "cancelled", error=CallCancelled(f"call to {call.service!r} cancelled"))
        return True

    def forget(self, future: Future[Any]) -> None:
        """Stop tracking the call that ``future`` belongs to, without settling it."""
        with self._lock:
            for key, call in list(self._calls.items()):
                if call.future is future:
                    del self._calls[key]
                    call.trace.end(TimeoutError("the caller stopped waiting"))

    def on_reply(self, message: amqp.Message) -> None:
        """Settle the call a reply answers; discard a reply no call waits for."""
        correlation_id = message.properties.get("correlation_id")
        call = self.pop(correlation_id)
        if call is None:
            logger.debug(LOG_LATE, correlation_id)
            return
        try:
            reply = decode_reply(message.body)
        except BadReply as err:
            self.settle(call, "error", error=err)
            return
        if reply.ok:
            self.settle(call, "ok", result=reply.result)
        else:
            error = RemoteError(
                reply.error_type, reply.error_message, service=call.service, method=call.method
            )
            self.settle(call, "remote_error", error=error)

    def on_return(self, exc: Exception, exchange: str, routing_key: str, message: Any) -> None:
        """Fail the call whose request the broker returned as unroutable with ``NoRoute``."""
        call = self.pop(message.properties.get("correlation_id"))
        if call is None:
            return
        error = NoRoute(
            f"no RPC server is bound for service {call.service!r} on exchange {exchange!r} "
            f"(the broker returned the request: {exc})",
            service=call.service,
        )
        self.settle(call, "no_route", error=error)

    def expire(self, now: float | None = None) -> float | None:
        """Fail calls whose deadline passed; return the seconds until the next deadline."""
        now = time.monotonic() if now is None else now
        expired: list[Call] = []
        with self._lock:
            while self._deadlines:
                head = self._deadlines[0]
                if self._calls.get(head.correlation_id) is not head:
                    heapq.heappop(self._deadlines)  # already answered
                elif head.deadline <= now:
                    heapq.heappop(self._deadlines)
                    del self._calls[head.correlation_id]
                    expired.append(head)
                else:
                    break
            self._next_wake = self._deadlines[0].deadline if self._deadlines else float("inf")
            next_wake = self._next_wake
        for call in expired:
            error = RPCTimeout(
                timeout_text(call.service, call.method, call.timeout),
                service=call.service,
                method=call.method,
            )
            self.settle(call, "timeout", error=error)
        return None if next_wake == float("inf") else max(0.0, next_wake - now)

    def services_waiting(self, started_before: float) -> set[str]:
        """The services that calls started before ``started_before`` still wait for."""
        with self._lock:
            return {c.service for c in self._calls.values() if c.started < started_before}

    def to_service(self, service: str) -> list[Call]:
        """The calls in flight to ``service``."""
        with self._lock:
            return [c for c in self._calls.values() if c.service == service]

    def fail_all(self, error: RPCError) -> None:
        """Fail every call in flight with ``error`` and stop tracking them."""
        with self._lock:
            calls = list(self._calls.values())
            self._calls.clear()
            self._deadlines.clear()
            self._next_wake = float("inf")
        for call in calls:
            self.settle(call, "error", error=error)

    def settle(
        self, call: Call, outcome: str, *, result: Any = None, error: BaseException | None = None
    ) -> None:
        """End ``call`` with a result or an error, and record its latency under ``outcome``."""
        try:
            if error is None:
                call.future.set_result(result)
            else:
                call.future.set_exception(error)
        except InvalidStateError:
            return  # ended already
        call.trace.end(error)
        key = (call.service, call.method or DEFAULT_METHOD_LABEL, outcome)
        histogram = self._histograms.get(key)
        if histogram is None:
            histogram = self._histograms[key] = RPC_LATENCY.labels(*key)
        histogram.observe(time.monotonic() - call.started)


def unavailable_text(service: str, exists: bool) -> str:
    """The message of a ``ServiceUnavailable``: the queue, and that no server consumes it."""
    if not exists:
        return f"no RPC server for service {service!r}: its request queue does not exist"
    return f"no RPC server is consuming the request queue {service!r} (is the server running?)"


def timeout_text(service: str, method: str | None, timeout: float) -> str:
    """The message of an ``RPCTimeout``."""
    target = f"{service!r} method {method!r}" if method else repr(service)
    return f"no reply from {target} within {timeout:g} s"
