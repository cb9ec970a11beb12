"""The RPC client's bookkeeping without a broker: replies find their calls, deadlines fail them."""

from __future__ import annotations

import asyncio
import json
import queue
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from typing import Any

import amqp
import pytest

from kitty_tasks.core import errors as core_errors
from kitty_tasks.core.dead_letters import QueueDeadLetters
from kitty_tasks.core.failure import Outcome
from rpc import (
    REPLY_TO,
    BadReply,
    ConnectionLost,
    NoRoute,
    NotConnected,
    RemoteError,
    RPCClient,
    RPCTimeout,
)
from rpc.calls import HEAP_SLACK, Call, CallsInFlight
from rpc.protocol import encode_error, encode_result
from tests.helpers import wait_for

SERVICE = "math.rpc"


class StubChannel:
    """The few channel calls the client makes while it sets up, recorded."""

    def __init__(self) -> None:
        self.declared: list[str] = []
        self.consumers: dict[str, Callable[[amqp.Message], None]] = {}
        self.events: dict[str, set[Callable[..., None]]] = {"basic_return": set()}

    def exchange_declare(self, name: str, *args: Any, **kwargs: Any) -> None:
        self.declared.append(name)

    def basic_consume(
        self, queue: str, *, no_ack: bool, callback: Callable[[amqp.Message], None]
    ) -> str:
        self.consumers[queue] = callback
        return "stub-consumer"

    def queue_declare(self, queue: str, *, passive: bool) -> tuple[str, int, int]:
        """A passive declare: every service has one server here."""
        return queue, 0, 1


class StubLink:
    """A Link without a broker: publishes are recorded; the reader thread serves stub frames."""

    def __init__(self, url: str, **options: Any) -> None:
        self.url = url
        self.ready = threading.Event()
        self.channel: StubChannel | None = None
        self.published: queue.Queue[amqp.Message] = queue.Queue()
        self.publish_error: Exception | None = None
        self._frames: queue.Queue[Callable[[], None]] = queue.Queue()
        self._woken = threading.Event()
        self._on_lost: Callable[[BaseException], None] | None = None

    def open(self) -> StubChannel:
        self.channel = StubChannel()
        return self.channel

    def open_channel(self) -> StubChannel:
        return StubChannel()

    def close(self, *, clean: bool = True) -> None:
        self.ready.clear()

    def dispose(self) -> None:
        self.close()

    def wake(self) -> None:
        self._woken.set()

    def publish(
        self, message: amqp.Message, exchange: str, routing_key: str, *, mandatory: bool = False
    ) -> None:
        if self.publish_error is not None:
            raise self.publish_error
        self.published.put(message)

    def serve(
        self,
        stopping: threading.Event,
        *,
        setup: Callable[[Any], None],
        on_lost: Callable[[BaseException], None],
        on_idle: Callable[[], float | None] | None = None,
    ) -> None:
        """Run queued frames and ``on_idle`` on this (the reader) thread, as the real Link does."""
        self._on_lost = on_lost
        while not stopping.is_set():
            while not self._frames.empty():
                self._frames.get()()
                self._frames.task_done()
            timeout = on_idle() if on_idle is not None else None
            self._woken.wait(timeout)
            self._woken.clear()

    def _on_reader(self, frame: Callable[[], None]) -> None:
        """Have the reader thread run ``frame``; return once it did."""
        self._frames.put(frame)
        self.wake()
        self._frames.join()

    def deliver(self, correlation_id: str, body: bytes) -> None:
        """A reply arrives on direct reply-to."""
        assert self.channel is not None
        callback = self.channel.consumers[REPLY_TO]
        message = amqp.Message(body, correlation_id=correlation_id)
        self._on_reader(lambda: callback(message))

    def return_request(self, request: amqp.Message) -> None:
        """The broker returns a mandatory request that no queue is bound for."""
        assert self.channel is not None
        handlers = list(self.channel.events["basic_return"])
        error = Exception("NO_ROUTE")
        self._on_reader(lambda: [h(error, "kitty.rpc", SERVICE, request) for h in handlers])

    def drop(self, err: BaseException) -> None:
        """The connection drops under the reader."""
        on_lost = self._on_lost
        assert on_lost is not None
        self._on_reader(lambda: on_lost(err))


@pytest.fixture
def links(monkeypatch: pytest.MonkeyPatch) -> list[StubLink]:
    """The stub links that RPC clients made from here on get instead of real ones."""
    made: list[StubLink] = []

    def make(url: str, **options: Any) -> StubLink:
        made.append(StubLink(url, **options))
        return made[-1]

    monkeypatch.setattr("rpc.client.Link", make)
    return made


@pytest.fixture
def client(links: list[StubLink]) -> Iterator[RPCClient]:
    """A client connected over a stub link."""
    rpc_client = RPCClient("amqp://guest:guest@localhost:5672//")
    rpc_client.connect()
    yield rpc_client
    rpc_client.disconnect()


@pytest.fixture
def link(client: RPCClient, links: list[StubLink]) -> StubLink:
    """The client's stub link."""
    return links[-1]


def _sent(link: StubLink) -> amqp.Message:
    return link.published.get(timeout=5)


def _correlation_id(message: amqp.Message) -> str:
    return str(message.properties["correlation_id"])


def test_each_reply_settles_the_call_with_its_correlation_id(
    client: RPCClient, link: StubLink
) -> None:
    # Given two calls in flight
    first = client.call_async(SERVICE, {"a": 1})
    second = client.call_async(SERVICE, {"a": 2})
    first_id, second_id = _correlation_id(_sent(link)), _correlation_id(_sent(link))
    assert first_id != second_id
    assert client.in_flight == 2
    # When their replies come in the other order
    link.deliver(second_id, encode_result("two", max_bytes=1000))
    link.deliver(first_id, encode_result("one", max_bytes=1000))
    # Then each call gets its own answer, and none is left pending
    assert (first.result(5), second.result(5)) == ("one", "two")
    assert client.in_flight == 0


def test_a_reply_nobody_waits_for_is_discarded(client: RPCClient, link: StubLink) -> None:
    call = client.call_async(SERVICE, {"a": 1})
    call_id = _correlation_id(_sent(link))
    # A reply for an id this client never sent changes nothing
    link.deliver("someone-else.7", encode_result("stray", max_bytes=1000))
    assert not call.done()
    assert client.in_flight == 1
    # and the call's own reply still settles it
    link.deliver(call_id, encode_result("mine", max_bytes=1000))
    assert call.result(5) == "mine"


def test_a_timed_out_call_raises_rpc_timeout_and_its_late_reply_is_discarded(
    client: RPCClient, link: StubLink
) -> None:
    # Given a call that waits longer than the next one's timeout
    patient = client.call_async(SERVICE, {"wait": True}, timeout=60)
    _sent(link)
    # When a call with a short timeout gets no reply
    with pytest.raises(RPCTimeout, match=r"within 0\.05 s") as raised:
        client.call(SERVICE, {"a": 1}, timeout=0.05, method="add")
    late_id = _correlation_id(_sent(link))
    # Then it raised RPCTimeout (a TimeoutError) and only the patient call is still pending
    assert isinstance(raised.value, TimeoutError)
    assert (raised.value.service, raised.value.method) == (SERVICE, "add")
    assert client.in_flight == 1
    # And its reply, arriving late, is discarded without touching the other call
    link.deliver(late_id, encode_result("late", max_bytes=1000))
    assert client.in_flight == 1
    assert not patient.done()


def test_an_error_reply_is_a_remote_error_with_type_and_message(
    client: RPCClient, link: StubLink
) -> None:
    call = client.call_async(SERVICE, {}, method="divide")
    link.deliver(_correlation_id(_sent(link)), encode_error("ZeroDivisionError", "by zero"))
    with pytest.raises(RemoteError) as raised:
        call.result(5)
    assert (raised.value.type, raised.value.message) == ("ZeroDivisionError", "by zero")
    assert (raised.value.service, raised.value.method) == (SERVICE, "divide")
    assert client.in_flight == 0


def test_a_reply_that_is_not_the_wire_format_fails_its_call(
    client: RPCClient, link: StubLink
) -> None:
    call = client.call_async(SERVICE, {})
    link.deliver(_correlation_id(_sent(link)), b"not json")
    with pytest.raises(BadReply):
        call.result(5)
    assert client.in_flight == 0


def test_a_returned_request_fails_with_no_route(client: RPCClient, link: StubLink) -> None:
    call = client.call_async(SERVICE, {})
    link.return_request(_sent(link))
    with pytest.raises(NoRoute, match="no RPC server is bound") as raised:
        call.result(5)
    assert raised.value.service == SERVICE
    assert client.in_flight == 0


def test_a_dropped_connection_fails_every_call_in_flight_once(
    client: RPCClient, link: StubLink
) -> None:
    calls = [client.call_async(SERVICE, {"n": n}) for n in range(3)]
    ids = [_correlation_id(_sent(link)) for _ in calls]
    link.drop(ConnectionResetError("reset by peer"))
    for call in calls:
        with pytest.raises(ConnectionLost, match="may or may not have run"):
            call.result(5)
    assert client.in_flight == 0
    # A reply that still comes for one of them finds nothing to settle
    link.deliver(ids[0], encode_result("late", max_bytes=1000))
    assert client.in_flight == 0


def test_a_call_that_could_not_be_sent_leaves_nothing_pending(
    client: RPCClient, link: StubLink
) -> None:
    link.publish_error = BrokenPipeError("broken pipe")
    with pytest.raises(ConnectionLost, match="the request was not sent"):
        client.call_async(SERVICE, {})
    assert client.in_flight == 0


def test_disconnect_fails_calls_in_flight_with_the_one_not_connected(
    links: list[StubLink],
) -> None:
    client = RPCClient("amqp://guest:guest@localhost:5672//")
    client.connect()
    call = client.call_async(SERVICE, {})
    client.disconnect()
    with pytest.raises(core_errors.NotConnected):
        call.result(5)
    assert isinstance(call.exception(), NotConnected)
    assert client.in_flight == 0
    with pytest.raises(NotConnected, match="connect"):
        client.call_async(SERVICE, {})


def _call(correlation_id: str, deadline: float) -> Call:
    future: Future[Any] = Future()
    future.set_running_or_notify_cancel()
    return Call(deadline, correlation_id, SERVICE, None, 0.0, deadline, future)


def test_calls_expire_at_their_deadline_in_order_and_answered_ones_are_skipped() -> None:
    calls = CallsInFlight()
    early, answered, late = _call("a", 1.0), _call("b", 2.0), _call("c", 3.0)
    assert calls.add(late)  # the earliest deadline so far: the reader must wake for it
    assert calls.add(early)
    assert not calls.add(answered)
    calls.on_reply(amqp.Message(json.dumps({"ok": True, "result": 2}), correlation_id="b"))
    # Before any deadline nothing fails; the reader is told when to look again
    assert calls.expire(now=0.5) == pytest.approx(0.5)
    # At 2.5 s the first call has timed out; the answered one was not failed
    assert calls.expire(now=2.5) == pytest.approx(0.5)
    assert isinstance(early.future.exception(0), RPCTimeout)
    assert answered.future.result(0) == 2
    assert not late.future.done()
    assert len(calls) == 1
    # After the last deadline nothing is left to wait for
    assert calls.expire(now=3.0) is None
    assert isinstance(late.future.exception(0), RPCTimeout)
    assert len(calls) == 0
    assert calls.deadlines_held == 0


def test_answered_calls_do_not_pile_up_in_the_deadline_heap() -> None:
    # Given many calls with long timeouts, answered at once
    calls = CallsInFlight()
    for n in range(1000):
        calls.add(_call(f"id.{n}", 30.0))
        calls.on_reply(
            amqp.Message(json.dumps({"ok": True, "result": n}), correlation_id=f"id.{n}")
        )
    # Then the deadline heap does not keep them until their deadlines
    assert len(calls) == 0
    assert calls.deadlines_held <= HEAP_SLACK + 1


def test_a_request_whose_copy_cannot_be_confirmed_is_rejected_to_its_dlq() -> None:
    # Given no broker where the dead letters should go
    dead_letters = QueueDeadLetters("amqp://guest:guest@127.0.0.1:1//", "math.rpc")
    request = amqp.Message(b"garbage", application_headers={"x-kitty-rpc-method": "add"})
    # When a failed request is dead-lettered
    outcome = dead_letters.dead_letter(request, ValueError("bad"))
    # Then the server must reject it (the broker dead-letters it), never ack it uncopied
    assert outcome is Outcome.REJECTED
    assert not outcome.ack
    dead_letters.close()


def test_a_cancelled_acall_leaves_no_call_and_its_late_reply_is_discarded(
    client: RPCClient, link: StubLink
) -> None:
    async def cancel_one_of_two() -> tuple[Any, int]:
        kept = asyncio.create_task(client.acall(SERVICE, {"a": 1}))
        dropped = asyncio.create_task(client.acall(SERVICE, {"a": 2}))
        sent = [await asyncio.to_thread(_sent, link) for _ in range(2)]
        ids = {json.loads(m.body)["a"]: _correlation_id(m) for m in sent}
        dropped.cancel()
        with pytest.raises(asyncio.CancelledError):
            await dropped
        left = client.in_flight
        # The cancelled call's reply comes anyway, then the other call's
        link.deliver(ids[2], encode_result("late", max_bytes=1000))
        link.deliver(ids[1], encode_result("kept", max_bytes=1000))
        return await kept, left

    result, left = asyncio.run(cancel_one_of_two())
    assert (result, left) == ("kept", 1)
    assert client.in_flight == 0


def test_an_acall_cancelled_while_sending_is_forgotten_once_sent(
    client: RPCClient, link: StubLink
) -> None:
    sending, release = threading.Event(), threading.Event()
    publish = link.publish

    def held_publish(*args: Any, **kwargs: Any) -> None:
        sending.set()
        assert release.wait(10)
        publish(*args, **kwargs)

    link.publish = held_publish  # type: ignore[method-assign]

    async def cancel_during_send() -> None:
        call = asyncio.create_task(client.acall(SERVICE, {"a": 1}))
        assert await asyncio.to_thread(sending.wait, 10)
        call.cancel()
        with pytest.raises(asyncio.CancelledError):
            await call

    asyncio.run(cancel_during_send())
    # The request goes out after the caller left: it is tracked, then forgotten at once
    release.set()
    _sent(link)
    wait_for(lambda: client.in_flight == 0, timeout=5, interval=0.01, what="the call forgotten")
