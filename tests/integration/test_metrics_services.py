"""The /metrics endpoints of event and RPC processes, scraped while events flow and calls run."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
from kombu import Connection

from events import EventBus
from kitty_tasks.core.metrics import serve_metrics
from kitty_tasks.core.settings import get_settings
from kitty_tasks.core.topology import AUDIT_EVENTS, EVENTS_EXCHANGE
from rpc import NoRoute, RemoteError, RPCClient
from tests.helpers import ROOT, queue_counts, wait_for
from tests.integration.ops_support import free_port, sample, scrape

pytestmark = [pytest.mark.rabbitmq]


@pytest.fixture(scope="module")
def own_port() -> int:
    """This test process's own endpoint, started as any service would: from KITTY_METRICS_PORT."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("KITTY_METRICS_PORT", str(free_port()))
        get_settings.cache_clear()
        try:
            port = serve_metrics(addr="127.0.0.1")
        finally:
            patch.undo()
            get_settings.cache_clear()
    assert port is not None
    return port


@pytest.fixture
def bare_url(ops_url: str) -> str:
    """A vhost of this test's own without audit.events' catch-all binding, so events can be lost."""
    with Connection(ops_url) as connection:
        connection.default_channel.queue_unbind(AUDIT_EVENTS, EVENTS_EXCHANGE, "#")
    return ops_url


@contextmanager
def service(*args: str) -> Iterator[int]:
    """``tests.integration.metrics_service ARGS`` with KITTY_METRICS_PORT set; yields the port."""
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "tests.integration.metrics_service", *args],
        cwd=ROOT, env={**os.environ, "KITTY_METRICS_PORT": str(port)},
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    try:
        wait_for(lambda: _answers(port, process), 20, 0.2, what=f"{args[0]} service's /metrics")
        yield port
    finally:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)


def _answers(port: int, process: subprocess.Popen[str]) -> bool:
    if process.poll() is not None:
        output = process.stdout.read() if process.stdout else ""
        raise AssertionError(f"the service exited early:\n{output}")
    try:
        scrape(port)
    except OSError:
        return False
    return True


def test_serve_metrics_is_idempotent(own_port: int) -> None:
    # Given this process serves /metrics already
    # When a library or the service asks again, for the settings' port or another one
    # Then the one endpoint keeps serving and its port comes back
    assert serve_metrics() == own_port
    assert serve_metrics(free_port()) == own_port


def test_event_processes_show_published_consumed_failed_and_unroutable(
    bare_url: str, own_port: int
) -> None:
    # Given a subscriber service whose only metrics endpoint is the one start_consuming opens
    tag = uuid.uuid4().hex[:8]
    event_type, queue = f"metrics.t{tag}.done", f"metrics-{tag}.events"
    with service("events", bare_url, f"metrics.t{tag}.#", queue) as service_port:
        consumed = {"event_type": event_type, "queue": queue}
        assert sample(scrape(service_port), "kitty_events_consumed_total", **consumed) is None
        before = scrape(own_port)

        # When this process publishes three good events, one that always fails, and one
        # event nobody subscribes to, allowing it to go nowhere
        with EventBus(bare_url, source=f"metrics-test-{tag}") as bus:
            for n in range(3):
                bus.publish(event_type, {"n": n})
            bus.publish(event_type, {"fail": True})
            bus.publish(f"metrics.nobody{tag}.done", {}, allow_unroutable=True)

        # Then the subscriber's endpoint counts 3 consumed, 1 retried and 1 dead-lettered
        def failed(outcome: str) -> float | None:
            return sample(scrape(service_port), "kitty_events_failed_total", outcome=outcome,
                          **consumed)  # fmt: skip

        wait_for(lambda: failed("dead_lettered") == 1, 20, 0.2, what="the event dead-lettered")
        samples = scrape(service_port)
        assert sample(samples, "kitty_events_consumed_total", **consumed) == 3
        assert failed("retried") == 1
        assert queue_counts(bare_url, f"{queue}.dlq")[0] == 1

    # And the publisher's endpoint counts 4 published and 1 unroutable, under the publisher
    after = scrape(own_port)
    source = f"metrics-test-{tag}"

    def grew(name: str, **labels: str) -> float:
        return (sample(after, name, **labels) or 0) - (sample(before, name, **labels) or 0)

    assert grew("kitty_events_published_total", event_type=event_type, source=source) == 4
    nobody = f"metrics.nobody{tag}.done"
    assert grew("kitty_events_unroutable_total", event_type=nobody, source=source) == 1
    assert grew("kitty_events_published_total", event_type=nobody, source=source) == 0


def test_rpc_processes_show_requests_by_outcome_and_client_latency(
    ops_url: str, own_port: int
) -> None:
    # Given an RPC server process whose only metrics endpoint is the one start() opens
    name = f"test.metrics.{uuid.uuid4().hex[:8]}.rpc"
    missing = f"{name}.missing"
    with service("rpc", ops_url, name) as service_port:
        wait_for(lambda: queue_counts(ops_url, name)[1] > 0, 20, 0.2, what="the server consuming")
        before = scrape(own_port)

        # When this process calls: one success, one remote error, one unknown method, and a
        # service that has no server
        with RPCClient(ops_url) as client:
            assert client.call(name, {"a": 5, "b": 3}, timeout=10, method="add") == {"result": 8}
            with pytest.raises(RemoteError, match="boom"):
                client.call(name, {}, timeout=10, method="boom")
            with pytest.raises(RemoteError, match="has no method"):
                client.call(name, {}, timeout=10, method=f"nope{uuid.uuid4().hex[:4]}")
            with pytest.raises(NoRoute):
                client.call(missing, {}, timeout=10)

        # Then the server's endpoint counts each request by method and outcome, with
        # unknown method names under one label
        served = scrape(service_port)
        for method, outcome in (("add", "ok"), ("boom", "error"), ("unknown", "bad_request")):
            labels = {"service": name, "method": method, "outcome": outcome}
            assert sample(served, "kitty_rpc_requests_total", **labels) == 1, labels

    # And the caller's endpoint observed each call's latency under its outcome
    after = scrape(own_port)
    for service_name, method, outcome in (
        (name, "add", "ok"),
        (name, "boom", "remote_error"),
        (missing, "default", "no_route"),
    ):
        labels = {"service": service_name, "method": method, "outcome": outcome}
        count = "kitty_rpc_latency_seconds_count"
        grown = (sample(after, count, **labels) or 0) - (sample(before, count, **labels) or 0)
        assert grown == 1, labels
