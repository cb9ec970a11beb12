"""The async faces on the real broker: acall, apublish, asubmit from one event loop."""

from __future__ import annotations

import asyncio
import logging
import select
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Awaitable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pytest
from kombu import Connection

from events import Event, EventBus, PayloadTooLarge, PublishRejected, Unroutable
from events import NotConnected as EventsNotConnected
from kitty_tasks import TaskQueue
from kitty_tasks.core.errors import PayloadTooLarge as TaskPayloadTooLarge
from kitty_tasks.core.metrics import RPC_LATENCY
from kitty_tasks.core.topology import AUDIT_EVENTS, EVENTS_EXCHANGE, RESEARCH_TASKS
from rpc import NoRoute, NotConnected, RemoteError, RPCClient, RPCServer, RPCTimeout
from rpc.calls import LOG_LATE
from rpc.client import SEND_THREADS
from tests.helpers import ROOT, queue_counts, wait_for
from tests.integration.async_peer import READY
from tests.integration.rpc_support import service_name, serving
from tests.integration.test_tasks import drain

pytestmark = pytest.mark.rabbitmq

T = TypeVar("T")

#: How often the heartbeat wants to run, and the most it may be late (the issue's bound).
TICK = 0.010
MAX_LATENESS = 0.050
#: Calls and events sent at once in the load test.
CONCURRENT = 100
#: Rounds of the load test after the first, at most, until one keeps the bound.
MEASURED_ROUNDS = 3
#: Seconds the heartbeat runs on an idle loop, to report what the machine alone costs.
IDLE_WINDOW = 0.15


class Heartbeat:
    """A task on the loop that ticks every ``TICK`` s and records how late each tick woke."""

    def __init__(self) -> None:
        self.max_lateness = 0.0
        self.ticks = 0

    async def run(self, stop: asyncio.Event) -> None:
        """Tick until ``stop`` is set."""
        loop = asyncio.get_running_loop()
        while not stop.is_set():
            due = loop.time() + TICK
            await asyncio.sleep(TICK)
            self.max_lateness = max(self.max_lateness, loop.time() - due)
            self.ticks += 1


@dataclass
class Round:
    """One round of the load test: the replies, the events sent, the heartbeat, the time."""

    replies: list[Any]
    sent: list[Event]
    heartbeat: Heartbeat
    elapsed: float

    def __str__(self) -> str:
        return (
            f"{len(self.replies)} acalls + {len(self.sent)} apublishes in "
            f"{self.elapsed * 1000:.0f} ms; heartbeat max lateness "
            f"{self.heartbeat.max_lateness * 1000:.1f} ms over {self.heartbeat.ticks} ticks"
        )


async def with_heartbeat(work: Awaitable[T]) -> tuple[T, Heartbeat]:
    """Await ``work`` while a heartbeat ticks on the same loop; return both."""
    heartbeat, stop = Heartbeat(), asyncio.Event()
    ticking = asyncio.create_task(heartbeat.run(stop))
    try:
        return await work, heartbeat
    finally:
        stop.set()
        await ticking


def _latency_count(service: str, outcome: str) -> float:
    """Calls ``kitty_rpc_latency_seconds`` recorded for ``service``'s default method."""
    wanted = {"service": service, "method": "default", "outcome": outcome}
    return sum(
        sample.value
        for metric in RPC_LATENCY.collect()
        for sample in metric.samples
        if sample.name.endswith("_count") and sample.labels == wanted
    )


@pytest.fixture
def client(amqp_url: str) -> Iterator[RPCClient]:
    """A connected RPC client, disconnected afterwards."""
    with RPCClient(amqp_url) as rpc_client:
        yield rpc_client


@contextmanager
def gated_server(url: str) -> Iterator[tuple[str, threading.Event, threading.Event]]:
    """A one-thread service that answers once ``gate`` is set; ``started`` says a call came."""
    service = service_name("gated")
    started, gate = threading.Event(), threading.Event()

    def handle(request: dict[str, Any]) -> dict[str, Any]:
        if request.get("wait"):
            started.set()
            assert gate.wait(30), "the test never opened the gate"
        return {"echo": request["n"]}

    server = RPCServer(url, service, concurrency=1)
    server.register_handler(handle)
    try:
        with serving(server):
            yield service, started, gate
    finally:
        gate.set()  # a failed test must not leave the handler (and the server's stop) waiting


@contextmanager
def peer_process(url: str, seen_file: Path) -> Iterator[tuple[str, str]]:
    """``async_peer`` serving in a child process; yields (service, event type)."""
    service = service_name("double")
    event_type = f"asyncprobe.{uuid.uuid4().hex[:8]}.made"
    process = subprocess.Popen(
        [sys.executable, "-m", "tests.integration.async_peer", url, service, event_type,
         str(seen_file)],
        cwd=ROOT, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert process.stdout is not None
        readable, _, _ = select.select([process.stdout], [], [], 60)
        assert readable, "async_peer did not start within 60 s"
        assert process.stdout.readline().strip() == READY, "async_peer failed to start"
        yield service, event_type
    finally:
        process.send_signal(signal.SIGINT)
        process.wait(30)


def test_100_acalls_and_100_apublishes_leave_the_loop_free(
    amqp_url: str, client: RPCClient, tmp_path: Path
) -> None:
    # The server and subscriber run in another process, as they would for the brain API:
    # the loop's process holds only the clients whose threads the heartbeat competes with.
    seen_file = tmp_path / "seen"
    with (
        peer_process(amqp_url, seen_file) as (service, event_type),
        EventBus(amqp_url, source="async-publisher") as publisher,
    ):

        async def both() -> tuple[list[Any], list[Event]]:
            calls = [client.acall(service, {"n": n}, timeout=30) for n in range(CONCURRENT)]
            publishes = [publisher.apublish(event_type, {"n": n}) for n in range(CONCURRENT)]
            results = await asyncio.gather(*calls, *publishes)
            return results[:CONCURRENT], results[CONCURRENT:]

        async def rounds() -> list[Round]:
            # The machine is shared: another process's CPU burst delays every thread here,
            # whatever the design. So a round is repeated (MEASURED_ROUNDS at most) until one
            # keeps the bound; a loop that blocked on a confirm or a reply would miss it in
            # every round. The first round opens the publisher pool's connections and starts
            # the threads, as a service's first requests do; it is reported, not bounded.
            _, idle = await with_heartbeat(asyncio.sleep(IDLE_WINDOW))
            print(f"\nidle loop: heartbeat max lateness {idle.max_lateness * 1000:.1f} ms")
            done: list[Round] = []
            while len(done) < 1 + MEASURED_ROUNDS:
                started = time.monotonic()
                (replies, sent), heartbeat = await with_heartbeat(both())
                done.append(Round(replies, sent, heartbeat, time.monotonic() - started))
                print(done[-1])
                if len(done) > 1 and heartbeat.max_lateness < MAX_LATENESS:
                    break
            return done

        done = asyncio.run(rounds())
        wait_for(
            lambda: len(seen_file.read_text().split()) >= CONCURRENT * len(done),
            what="every event at the subscriber",
        )

    # Every call got its own answer, and every event arrived exactly once
    for each in done:
        assert each.replies == [{"n": 2 * n} for n in range(CONCURRENT)]
    seen = seen_file.read_text().split()
    assert sorted(seen) == sorted(event.event_id for each in done for event in each.sent)
    assert client.in_flight == 0
    # The waits held no thread each: a few threads served the hundred calls and events
    threads = [t.name for t in threading.enumerate()]
    assert len([name for name in threads if name.startswith("rpc-send")]) <= SEND_THREADS
    assert len([name for name in threads if name.startswith("event-publish")]) <= 1
    # And the loop kept its heartbeat (the one timed assertion the issue asks for)
    warm = done[1:]
    assert all(each.heartbeat.ticks > 0 for each in warm)
    assert min(each.heartbeat.max_lateness for each in warm) < MAX_LATENESS


def test_acall_raises_what_call_raises(amqp_url: str, client: RPCClient) -> None:
    failing = service_name("failing")
    server = RPCServer(amqp_url, failing)

    def fail(request: dict[str, Any]) -> None:
        raise ValueError("bad input")

    server.register_handler(fail)
    with serving(server), gated_server(amqp_url) as (silent, started, _gate):
        # A handler that fails
        with pytest.raises(RemoteError) as remote:
            asyncio.run(client.acall(failing, {"a": 1}, timeout=10))
        assert (remote.value.type, remote.value.message) == ("ValueError", "bad input")
        # A service nobody serves
        nobody = service_name("nobody")
        with pytest.raises(NoRoute, match="no RPC server is bound") as no_route:
            asyncio.run(client.acall(nobody, {"a": 1}, timeout=10))
        assert no_route.value.service == nobody
        # A reply that does not come in time
        with pytest.raises(RPCTimeout, match=r"no reply from .* within 0\.5 s"):
            asyncio.run(client.acall(silent, {"n": 1, "wait": True}, timeout=0.5))
        assert started.is_set()
    # Bad input, before anything is sent
    with pytest.raises(ValueError, match="needs a service name"):
        asyncio.run(client.acall("", {"a": 1}))
    assert client.in_flight == 0
    # A client not connected yet
    with pytest.raises(NotConnected, match="call connect"):
        asyncio.run(RPCClient(amqp_url).acall(failing, {"a": 1}))


def test_a_cancelled_acall_is_forgotten_and_its_late_reply_discarded(
    amqp_url: str, client: RPCClient, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="rpc.calls")
    with gated_server(amqp_url) as (service, started, gate):
        cancelled_before = _latency_count(service, "cancelled")

        async def cancel_then_call() -> Any:
            loop = asyncio.get_running_loop()
            pending = asyncio.create_task(client.acall(service, {"n": 1, "wait": True}))
            # The server holds the request: the call is in flight, its reply not yet sent
            assert await loop.run_in_executor(None, started.wait, 10)
            assert client.in_flight == 1
            pending.cancel()
            with pytest.raises(asyncio.CancelledError):
                await pending
            assert client.in_flight == 0
            # A timeout of asyncio.wait_for is a cancellation too
            with pytest.raises(TimeoutError):
                await asyncio.wait_for(client.acall(service, {"n": 2}), timeout=0.2)
            assert client.in_flight == 0
            gate.set()
            # The one-thread server answers in order: the late replies, then this call
            return await client.acall(service, {"n": 3}, timeout=10)

        assert asyncio.run(cancel_then_call()) == {"echo": 3}
    assert client.in_flight == 0
    assert _latency_count(service, "cancelled") == cancelled_before + 2
    late = [r for r in caplog.records if r.msg == LOG_LATE]
    assert len(late) == 2


def test_concurrent_apublishes_each_get_their_own_outcome(ops_url: str) -> None:
    # Given a vhost where one event type fills a reject-publish queue, and nothing
    # catches every key (audit.events' "#" unbound), so other types can be unroutable
    full_type, lost_type = "asyncprobe.full.made", "nobody.listens.here"
    with Connection(ops_url) as connection:
        channel = connection.channel()
        channel.queue_unbind(AUDIT_EVENTS, EVENTS_EXCHANGE, "#")
        channel.queue_declare(
            "async-tiny", durable=True, auto_delete=False,
            arguments={"x-max-length": 1, "x-overflow": "reject-publish"},
        )  # fmt: skip
        channel.queue_bind("async-tiny", EVENTS_EXCHANGE, full_type)
        channel.close()
    with EventBus(ops_url, source="async-probe", max_message_bytes=2048) as bus:
        bus.publish(full_type, {"n": 0})

        async def all_at_once() -> list[Event | BaseException]:
            return await asyncio.gather(
                bus.apublish(full_type, {"n": 1}),
                *(bus.apublish("fabrication.print.started", {"n": n}) for n in range(3)),
                bus.apublish(lost_type, {"n": 5}),
                bus.apublish(lost_type, {"n": 6}, allow_unroutable=True),
                return_exceptions=True,
            )

        # When they are published together (one batch, or more: each answer is its own)
        full, *printed, lost, allowed = asyncio.run(all_at_once())
        # Then each raised or returned as publish would have for it alone
        assert isinstance(full, PublishRejected)
        assert (str(full), full.queue) == (
            f"broker refused event(s) '{full_type}': queue 'async-tiny' is full "
            "(x-overflow reject-publish)",
            "async-tiny",
        )
        assert isinstance(lost, Unroutable)
        assert lost.routing_key == lost_type
        assert isinstance(allowed, Event)
        assert bus.unroutable_count == 1
        assert all(isinstance(event, Event) for event in printed)
        # Bad input raises at once, before anything is queued
        with pytest.raises(PayloadTooLarge, match="over the 2,048-byte limit"):
            asyncio.run(bus.apublish(full_type, {"blob": "x" * 4096}))
    assert queue_counts(ops_url, "fabrication.events")[0] == 3
    assert queue_counts(ops_url, "async-tiny")[0] == 1
    with pytest.raises(EventsNotConnected, match="not connected"):
        asyncio.run(EventBus(ops_url, source="async-probe").apublish(full_type, {}))


def test_20_concurrent_asubmits_land_in_the_queue(amqp_url: str) -> None:
    drain(amqp_url, RESEARCH_TASKS)
    with TaskQueue(amqp_url, RESEARCH_TASKS) as tasks:

        async def submit_20() -> list[str]:
            return await asyncio.gather(
                *(tasks.asubmit("research_paper", {"query": f"q{n}"}) for n in range(20))
            )

        ids = asyncio.run(submit_20())
    assert len(set(ids)) == 20
    # Confirmed means in the queue already: no wait needed
    assert queue_counts(amqp_url, RESEARCH_TASKS)[0] == 20
    landed = drain(amqp_url, RESEARCH_TASKS)
    assert sorted(m.headers["id"] for m in landed) == sorted(ids)


@pytest.mark.parametrize(
    ("task_type", "data", "options", "error", "match"),
    [
        ("", {}, {}, ValueError, "task_type must be a non-empty string"),
        ("research_paper", ["q"], {}, TypeError, "data must be a JSON object"),
        ("research_paper", {"q": 1}, {"priority": 11}, ValueError, "priority must be"),
        ("research_paper", {"q": 1}, {"max_retries": -1}, ValueError, "max_retries must be"),
        ("research_paper", {"q": {1, 2}}, {}, TypeError, "not JSON-serialisable"),
        ("research_paper", {"q": "x" * 2_000_000}, {}, TaskPayloadTooLarge, "over KITTY_MAX"),
    ],
)
def test_asubmit_refuses_bad_input_as_submit_does(
    amqp_url: str,
    *,
    task_type: str,
    data: Any,
    options: dict[str, Any],
    error: type[Exception],
    match: str,
) -> None:
    with TaskQueue(amqp_url, RESEARCH_TASKS) as tasks:
        with pytest.raises(error, match=match) as sync_error:
            tasks.submit(task_type, data, **options)
        with pytest.raises(error, match=match) as async_error:
            asyncio.run(tasks.asubmit(task_type, data, **options))
    assert str(async_error.value) == str(sync_error.value)
