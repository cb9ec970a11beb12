"""RPC against the real broker: the guide's examples, methods, typed errors, timeouts, load."""

from __future__ import annotations

import gc
import json
import threading
import time
import warnings
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from kombu import Connection
from pydantic import BaseModel

from kitty_tasks.core.metrics import RPC_LATENCY
from kitty_tasks.core.topology import dlq_name
from rpc import NoRoute, RemoteError, RPCClient, RPCServer, RPCTimeout
from rpc.protocol import deadline_passed, request_headers
from tests.helpers import queue_counts, wait_for
from tests.integration.rpc_support import service_name, serving

pytestmark = pytest.mark.rabbitmq

#: "At once": far below the calls' own timeouts (10 s and more), whatever the machine's load.
AT_ONCE = 2.0

#: Seconds a handler waits for a second one to overlap it before giving up.
OVERLAP_DEADLINE = 30.0


@pytest.fixture
def client(amqp_url: str) -> Iterator[RPCClient]:
    """A connected client, disconnected afterwards."""
    with RPCClient(amqp_url) as rpc_client:
        yield rpc_client


def _latency_count(service: str, method: str, outcome: str) -> float:
    """How many calls the ``kitty_rpc_latency_seconds`` histogram recorded for these labels."""
    for metric in RPC_LATENCY.collect():
        for sample in metric.samples:
            if sample.name.endswith("_count") and sample.labels == {
                "service": service,
                "method": method,
                "outcome": outcome,
            }:
                return float(sample.value)
    return 0.0


def test_guide_quick_start_math_rpc(amqp_url: str) -> None:
    # Given the guide's Quick Start server, as written
    def handle_add(request: dict[str, Any]) -> dict[str, Any]:
        return {"result": request["a"] + request["b"]}

    server = RPCServer(amqp_url, "math.rpc")
    server.connect()
    server.register_handler(handle_add)
    with serving(server):
        # When the guide's client calls it
        client = RPCClient(amqp_url)
        client.connect()
        result = client.call("math.rpc", {"a": 5, "b": 3}, timeout=30)
        client.disconnect()
    # Then it gets the guide's answer
    assert result == {"result": 8}


def test_guide_pattern_3_fabrication_estimate(amqp_url: str) -> None:
    density = 1.24  # g/cm3 of PLA

    def calculate_cost(volume: float, material_id: str) -> float:
        price_per_gram = {"pla_black_esun": 0.025}[material_id]
        return round(volume * density * price_per_gram, 2)

    # Given the guide's Pattern 3 server, as written
    def estimate_print_cost(request: dict[str, Any]) -> dict[str, Any]:
        stl_volume = request["volume_cm3"]
        material_id = request["material_id"]

        # Calculate cost
        cost_usd = calculate_cost(stl_volume, material_id)

        return {
            "cost_usd": cost_usd,
            "material_grams": stl_volume * density,
        }

    server = RPCServer(amqp_url, "fabrication.estimate.rpc")
    server.connect()
    server.register_handler(estimate_print_cost)
    with serving(server):
        # When the guide's client asks for an estimate
        client = RPCClient(amqp_url)
        client.connect()
        result = client.call(
            "fabrication.estimate.rpc",
            {
                "volume_cm3": 125.5,
                "material_id": "pla_black_esun",
            },
            timeout=10,
        )
        client.disconnect()
    # Then the reply carries the estimate's fields
    assert result == {"cost_usd": 3.89, "material_grams": pytest.approx(155.62)}
    assert f"Estimated cost: ${result['cost_usd']}" == "Estimated cost: $3.89"


class AddRequest(BaseModel):
    """Typed request of the ``add`` method."""

    a: int
    b: int


class AddResponse(BaseModel):
    """Typed response of the ``add`` method."""

    total: int


def test_named_methods_with_pydantic_models(amqp_url: str, client: RPCClient) -> None:
    service = service_name("calc")
    server = RPCServer(amqp_url, service, concurrency=2)

    @server.method("add", request_model=AddRequest, response_model=AddResponse)
    def add(request: AddRequest) -> AddResponse:
        return AddResponse(total=request.a + request.b)

    @server.method("negate")
    def negate(request: dict[str, Any]) -> int:
        return -int(request["x"])

    with serving(server):
        assert client.call(service, {"a": 2, "b": 40}, method="add") == {"total": 42}
        assert client.call(service, {"x": 7}, method="negate") == -7
        # A request that fails its model is answered with the validation error
        with pytest.raises(RemoteError) as invalid:
            client.call(service, {"a": "two", "b": 1}, method="add", timeout=5)
        assert invalid.value.type == "ValidationError"
        assert "a" in invalid.value.message
        # An unknown method, and no default handler, are answered at once too
        with pytest.raises(RemoteError) as unknown:
            client.call(service, {}, method="multiply", timeout=5)
        assert unknown.value.type == "UnknownMethod"
        assert "add, negate" in unknown.value.message
        with pytest.raises(RemoteError, match="no default handler"):
            client.call(service, {}, timeout=5)


def test_no_server_raises_no_route_at_once(client: RPCClient) -> None:
    service = service_name("nobody")
    before = _latency_count(service, "default", "no_route")
    started = time.monotonic()
    with pytest.raises(NoRoute, match="no RPC server is bound") as raised:
        client.call(service, {"a": 1}, timeout=10)
    elapsed = time.monotonic() - started
    # The broker's basic.return takes milliseconds; the bound only has to tell "at once"
    # from "at the call's 10 s timeout", with room for a loaded machine.
    assert elapsed < AT_ONCE
    assert raised.value.service == service
    assert _latency_count(service, "default", "no_route") == before + 1


def test_a_failing_handler_gives_remote_error_at_once(amqp_url: str, client: RPCClient) -> None:
    service = service_name("failing")
    server = RPCServer(amqp_url, service)

    def fail(request: dict[str, Any]) -> None:
        raise ValueError("bad")

    server.register_handler(fail)
    with serving(server):
        started = time.monotonic()
        with pytest.raises(RemoteError) as raised:
            client.call(service, {"a": 1}, timeout=10)
        elapsed = time.monotonic() - started
    assert elapsed < AT_ONCE
    assert (raised.value.type, raised.value.message) == ("ValueError", "bad")
    assert _latency_count(service, "default", "remote_error") == 1


def test_an_unserialisable_result_is_an_error_reply(amqp_url: str, client: RPCClient) -> None:
    service = service_name("unserialisable")
    server = RPCServer(amqp_url, service)
    server.register_handler(lambda request: {"when": object()})
    with serving(server):
        with pytest.raises(RemoteError) as raised:
            client.call(service, {}, timeout=5)
        # And the server keeps serving
        server.register_handler(lambda request: {"fine": True})
        assert client.call(service, {}, timeout=5) == {"fine": True}
    assert raised.value.type == "UnserializableResult"


def test_timeout_is_close_and_the_server_skips_nothing_after(
    amqp_url: str, client: RPCClient
) -> None:
    # Given a one-thread server whose "slow" method outlives its caller's timeout
    service = service_name("slow")
    server = RPCServer(amqp_url, service, concurrency=1)
    echoed: list[int] = []
    release = threading.Event()

    def slow(request: dict[str, Any]) -> dict[str, Any]:
        release.wait()  # until its caller timed out and later calls queued behind it
        return {"slow": True}

    def echo(request: dict[str, Any]) -> int:
        echoed.append(request["n"])
        return int(request["n"])

    server.add_method("slow", slow)
    server.add_method("echo", echo)
    with serving(server):
        try:
            started = time.monotonic()
            with pytest.raises(RPCTimeout, match=r"within 0\.5 s") as raised:
                client.call(service, {}, timeout=0.5, method="slow")
            elapsed = time.monotonic() - started
            # When later calls queue behind the slow handler (its late reply comes among them)
            futures = [
                client.call_async(service, {"n": n}, timeout=30, method="echo") for n in range(5)
            ]
        finally:
            release.set()
        results = [future.result() for future in futures]
    # Then the timeout came on time, and every later call ran and got its own answer
    # (never early; late only by scheduling, far from the 30 s the later calls may take)
    assert 0.5 <= elapsed < 0.5 + AT_ONCE
    assert raised.value.method == "slow"
    assert isinstance(raised.value, TimeoutError)
    assert results == [0, 1, 2, 3, 4]
    assert echoed == [0, 1, 2, 3, 4]


def test_200_calls_from_8_threads_through_one_client(amqp_url: str, client: RPCClient) -> None:
    service = service_name("load")
    server = RPCServer(amqp_url, service, concurrency=4)
    active = 0
    most_active = 0
    lock = threading.Lock()
    overlapping = threading.Event()

    def multiply(request: dict[str, Any]) -> dict[str, Any]:
        nonlocal active, most_active
        with lock:
            active += 1
            most_active = max(most_active, active)
            if active > 1:
                overlapping.set()
        # The first handler waits for a second to run beside it (a bound, not a pace: with
        # eight callers and four threads that comes at once unless the server serialises).
        overlapping.wait(OVERLAP_DEADLINE)
        with lock:
            active -= 1
        return {"product": request["x"] * request["y"], "x": request["x"]}

    server.register_handler(multiply)
    with serving(server):

        def worker(thread_no: int) -> list[tuple[int, Any]]:
            answers = []
            for i in range(25):
                x = thread_no * 1000 + i
                answers.append((x, client.call(service, {"x": x, "y": 3}, timeout=20)))
            return answers

        with ThreadPoolExecutor(8) as pool:
            answers = [a for batch in pool.map(worker, range(8)) for a in batch]
    assert len(answers) == 200
    assert all(result == {"product": x * 3, "x": x} for x, result in answers)
    assert most_active > 1  # the server's 4 handler threads really ran side by side
    assert most_active <= 4


@pytest.mark.slow
def test_a_stale_request_is_not_executed_when_a_server_starts_later(amqp_url: str) -> None:
    # Given a service whose queue exists but whose server is down
    service = service_name("stale")
    declaring = RPCServer(amqp_url, service)
    declaring.connect()
    declaring.stop()
    executed: list[dict[str, Any]] = []
    # When a request with a 1 s timeout waits in the queue (an RPCClient would refuse to
    # send it there: a client of another language, say), and a server starts only after the
    # broker expired it
    with Connection(amqp_url) as connection:
        connection.Producer().publish(
            json.dumps({"stale": True}).encode(),
            exchange="kitty.rpc",
            routing_key=service,
            content_type="application/json",
            content_encoding="utf-8",
            correlation_id="stale-1",
            reply_to="nobody.waits",
            expiration=1.0,
            headers=request_headers(None, 1.0),
        )
    wait_for(lambda: queue_counts(amqp_url, dlq_name(service))[0] == 1, 30, what="expiry")
    with RPCClient(amqp_url) as client:
        server = RPCServer(amqp_url, service)

        def record(request: dict[str, Any]) -> str:
            executed.append(request)
            return "done"

        server.register_handler(record)
        with serving(server):
            # Then the server serves new calls, but never ran the stale one
            assert client.call(service, {"fresh": True}, timeout=5) == "done"
    assert executed == [{"fresh": True}]
    # And the broker dead-lettered the expired request into the service's DLQ
    with Connection(amqp_url) as connection:
        channel = connection.default_channel
        dead = channel.basic_get(dlq_name(service), no_ack=True)
    assert dead is not None
    assert json.loads(dead.body) == {"stale": True}
    assert dead.headers["x-death"][0]["reason"] == "expired"


def test_a_request_prefetched_past_its_deadline_is_skipped(
    amqp_url: str, client: RPCClient
) -> None:
    # Given one handler thread busy, and a second request waiting in the server's prefetch buffer
    service = service_name("prefetched")
    server = RPCServer(amqp_url, service, concurrency=1, prefetch=2)
    echoed: list[int] = []
    slow_started, release = threading.Event(), threading.Event()

    def slow(request: dict[str, Any]) -> str:
        slow_started.set()
        release.wait()  # until the waiting request's deadline has passed
        return "slow done"

    def echo(request: dict[str, Any]) -> int:
        echoed.append(request["n"])
        return int(request["n"])

    server.add_method("slow", slow)
    server.add_method("echo", echo)
    with serving(server):
        try:
            slow_call = client.call_async(service, {}, timeout=30, method="slow")
            assert slow_started.wait(30)
            # When the waiting request's deadline passes before a thread is free
            waiting = client.call_async(service, {"n": 1}, timeout=0.3, method="echo")
            sent_by = time.time()
            with pytest.raises(RPCTimeout):
                waiting.result()
            # (the server reads the deadline on its own clock; the header's is at most this)
            latest_deadline = request_headers("echo", 0.3, now=sent_by)
            wait_for(lambda: deadline_passed(latest_deadline), 5, interval=0.01)
        finally:
            release.set()
        assert slow_call.result() == "slow done"
        # Then it is dropped unexecuted, and the next request runs
        assert client.call(service, {"n": 2}, timeout=5, method="echo") == 2
    assert echoed == [2]


def test_stop_cancels_the_consumer_while_a_handler_finishes(amqp_url: str) -> None:
    # Given a server in the middle of a request
    service = service_name("stopping")
    server = RPCServer(amqp_url, service, concurrency=1)
    in_hand, release = threading.Event(), threading.Event()

    def slow(request: dict[str, Any]) -> str:
        in_hand.set()
        release.wait()
        return "done"

    server.register_handler(slow)
    with serving(server), RPCClient(amqp_url) as client:
        call = client.call_async(service, {}, timeout=30)
        assert in_hand.wait(30)
        # When stop() is called while the handler still runs
        stopper = threading.Thread(target=server.stop)
        stopper.start()
        try:
            # Then the queue loses its consumer at once: new requests wait for another server
            wait_for(lambda: queue_counts(amqp_url, service)[1] == 0, 30, what="the cancel")
        finally:
            release.set()
            stopper.join(10)
        # and the request in hand is still answered
        assert call.result(30) == "done"


def test_stop_waits_for_hung_handlers_at_most_its_timeout_in_all(amqp_url: str) -> None:
    # Given a server whose four handler threads are all stuck
    service = service_name("hung")
    server = RPCServer(amqp_url, service, concurrency=4)
    stuck = threading.Semaphore(0)
    release = threading.Event()

    def hang(request: dict[str, Any]) -> None:
        stuck.release()
        release.wait(30)

    server.register_handler(hang)
    try:
        with serving(server), RPCClient(amqp_url) as client:
            for _ in range(4):
                client.call_async(service, {}, timeout=30)
            for _ in range(4):
                assert stuck.acquire(timeout=30)
            # When it is stopped with a 1 s timeout
            started = time.monotonic()
            server.stop(timeout=1)
            elapsed = time.monotonic() - started
            # Then it gave up on the handlers after 1 s, not 1 s for each of the 4
            assert not server.running
            assert 1 <= elapsed < 4
    finally:
        release.set()


def test_a_disconnected_client_and_a_stopped_server_leave_no_socket_open(amqp_url: str) -> None:
    # Given a server and a client that served a call
    service = service_name("sockets")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ResourceWarning)
        server = RPCServer(amqp_url, service)
        server.register_handler(lambda request: request)
        with serving(server), RPCClient(amqp_url) as client:
            assert client.call(service, {"n": 1}, timeout=5) == {"n": 1}
        # When both are closed and then dropped
        del server, client
        gc.collect()
    # Then nothing was left for the garbage collector to close
    assert [str(w.message) for w in caught if issubclass(w.category, ResourceWarning)] == []
