"""RPC to a service nobody serves fails fast, and leaves no request behind to be dead-lettered."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from kombu import Connection

from kitty_tasks.core.topology import dlq_name
from rpc import NoRoute, RPCClient, RPCServer, ServiceUnavailable
from rpc.declare import declare_service_queue
from rpc.presence import QueueStat, ServicePresence
from tests.helpers import queue_counts, wait_for
from tests.integration.rpc_support import service_name, serving

pytestmark = pytest.mark.rabbitmq

#: The bound the issue sets on failing a call that no server can answer (the checks take
#: milliseconds: a passive declare, or the broker's basic.return).
FAIL_FAST = 1.0
#: A call in flight is failed by the client's watch, every WATCH_INTERVAL; the bound leaves
#: room for a loaded machine and stays far below the call's own 30 s timeout.
IN_FLIGHT_FAIL_FAST = 5.0


@pytest.fixture
def checks(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, QueueStat | None]]:
    """Every check of a request queue that clients make from here on, with what it found."""
    seen: list[tuple[str, QueueStat | None]] = []
    real = ServicePresence.stat

    def recording(self: ServicePresence, service: str) -> QueueStat | None:
        found = real(self, service)
        seen.append((service, found))
        return found

    monkeypatch.setattr(ServicePresence, "stat", recording)
    return seen


@pytest.fixture
def client(amqp_url: str) -> Iterator[RPCClient]:
    """A connected client, disconnected afterwards."""
    with RPCClient(amqp_url) as rpc_client:
        yield rpc_client


def _declare_unserved(url: str, service: str) -> None:
    """The queue (and DLQ) a server leaves behind after it stopped, as ``make demo`` did."""
    with Connection(url) as connection:
        declare_service_queue(connection.connection.channel(), service)


def _nothing_left(url: str, service: str) -> None:
    """The request queue is empty, so nothing can expire into the DLQ, and the DLQ is empty."""
    wait_for(lambda: queue_counts(url, service)[0] == 0, timeout=10, what="an empty request queue")
    assert queue_counts(url, dlq_name(service))[0] == 0


def test_a_queue_without_consumer_fails_in_under_a_second(amqp_url: str, client: RPCClient) -> None:
    service = service_name("unserved")
    _declare_unserved(amqp_url, service)
    started = time.monotonic()
    with pytest.raises(ServiceUnavailable) as raised:
        client.call(service, {"a": 1}, timeout=30)
    assert time.monotonic() - started < FAIL_FAST
    assert f"no RPC server is consuming the request queue {service!r}" in str(raised.value)
    assert raised.value.service == service
    _nothing_left(amqp_url, service)


def test_a_service_without_queue_fails_fast(client: RPCClient) -> None:
    service = service_name("missing")
    started = time.monotonic()
    with pytest.raises(ServiceUnavailable) as raised:  # NoRoute is a kind of it
        client.call(service, {"a": 1}, timeout=30)
    assert time.monotonic() - started < FAIL_FAST
    assert isinstance(raised.value, NoRoute)
    assert service in str(raised.value)


def test_a_call_in_flight_fails_soon_after_its_server_stops(
    amqp_url: str, client: RPCClient
) -> None:
    service = service_name("stopping")
    entered, release = threading.Event(), threading.Event()

    def stuck(request: dict[str, Any]) -> dict[str, Any]:
        entered.set()
        release.wait(30)
        return request

    server = RPCServer(amqp_url, service, concurrency=1)
    server.register_handler(stuck)
    try:
        with serving(server):
            call = client.call_async(service, {"a": 1}, timeout=30)
            assert entered.wait(10), "the handler never started"
            # The server stops without finishing the call: its stop timeout runs out.
            server.stop(timeout=0.2)
            stopped = time.monotonic()
            error = call.exception(timeout=10)
            assert time.monotonic() - stopped < IN_FLIGHT_FAIL_FAST
    finally:
        release.set()
    assert isinstance(error, ServiceUnavailable)
    assert "the call was abandoned" in str(error)
    _nothing_left(amqp_url, service)


def test_a_call_a_stopping_server_finishes_still_gets_its_reply(
    amqp_url: str, checks: list[tuple[str, QueueStat | None]], client: RPCClient
) -> None:
    service = service_name("draining")
    entered, release = threading.Event(), threading.Event()

    def slow(request: dict[str, Any]) -> dict[str, Any]:
        entered.set()
        release.wait(30)
        return {"echo": request["a"]}

    server = RPCServer(amqp_url, service, concurrency=1)
    server.register_handler(slow)
    with serving(server):
        call = client.call_async(service, {"a": 7}, timeout=30)
        assert entered.wait(10), "the handler never started"
        stopper = threading.Thread(target=server.stop, kwargs={"timeout": 30})
        stopper.start()
        # The consumer is cancelled at once; the watch sees that, and must not give up on a
        # request the stopping server still holds.
        wait_for(
            lambda: (service, QueueStat(consumers=0, ready=0)) in checks,
            what="a watch that found no consumer",
        )
        assert client.in_flight == 1
        release.set()
        assert call.result(10) == {"echo": 7}
        stopper.join(15)
