"""Blocking consumers stop cleanly on SIGTERM, and on SIGINT even when started in the background."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from events import EventBus
from kitty_tasks.core.topology import subscriber_queue_name
from rpc import RPCClient
from tests.helpers import ROOT, queue_counts, wait_for
from tests.integration.events_helpers import unique

pytestmark = pytest.mark.rabbitmq

SUBSCRIBER = textwrap.dedent(
    """
    import sys
    from events import EventBus

    def handle(event):
        print("handled", event.data["n"], flush=True)

    bus = EventBus(sys.argv[1], source=sys.argv[2])
    bus.connect()
    bus.subscribe("fabrication.print.#", handle)
    bus.start_consuming()
    print("stopped cleanly", flush=True)
    """
)

SERVER = textwrap.dedent(
    """
    import sys
    from rpc import RPCServer

    server = RPCServer(sys.argv[1], sys.argv[2])
    server.connect()
    server.register_handler(lambda request: {"result": request["a"] + request["b"]})
    server.start()
    print("stopped cleanly", flush=True)
    """
)

# SIGINT as a shell's background job gets it (ignored), and SIGTERM as docker stop sends it.
CASES = [
    pytest.param(signal.SIGINT, True, id="sigint-started-in-background"),
    pytest.param(signal.SIGTERM, False, id="sigterm"),
]


def _spawn(script: Path, *args: str, ignore_sigint: bool) -> subprocess.Popen[str]:
    def preexec() -> None:
        signal.signal(signal.SIGINT, signal.SIG_IGN if ignore_sigint else signal.SIG_DFL)

    return subprocess.Popen(
        [sys.executable, "-u", str(script), *args],
        cwd=ROOT, text=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        preexec_fn=preexec,  # noqa: PLW1509 - only a signal disposition, before exec
    )  # fmt: skip


@pytest.mark.parametrize(("signum", "ignore_sigint"), CASES)
def test_event_subscriber_stops_cleanly(
    amqp_url: str, tmp_path: Path, signum: signal.Signals, ignore_sigint: bool
) -> None:
    # Given a blocking subscriber process
    source = unique("stopper")
    queue = subscriber_queue_name(source, "fabrication.print.#")
    script = tmp_path / "subscriber.py"
    script.write_text(SUBSCRIBER)
    process = _spawn(script, amqp_url, source, ignore_sigint=ignore_sigint)
    try:
        wait_for(lambda: _consumers(amqp_url, queue) == 1, 30, what="the subscriber")
        with EventBus(amqp_url, source="fabrication-service") as bus:
            bus.publish("fabrication.print.started", {"n": 1})
        wait_for(lambda: queue_counts(amqp_url, queue) == (0, 1), 15)

        # When it gets the signal
        process.send_signal(signum)
        output, _ = process.communicate(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()

    # Then it returns from start_consuming, exits 0, and left nothing unacked
    assert "handled 1" in output
    assert "stopped cleanly" in output, output
    assert process.returncode == 0, output
    assert queue_counts(amqp_url, queue) == (0, 0)


@pytest.mark.parametrize(("signum", "ignore_sigint"), CASES)
def test_rpc_server_stops_cleanly(
    amqp_url: str, tmp_path: Path, signum: signal.Signals, ignore_sigint: bool
) -> None:
    # Given a blocking RPC server process that has answered a call
    service = unique("stopper") + ".rpc"
    script = tmp_path / "server.py"
    script.write_text(SERVER)
    process = _spawn(script, amqp_url, service, ignore_sigint=ignore_sigint)
    try:
        wait_for(lambda: _consumers(amqp_url, service) == 1, 30, what="the server")
        with RPCClient(amqp_url) as client:
            assert client.call(service, {"a": 5, "b": 3}, timeout=10) == {"result": 8}

        # When it gets the signal
        process.send_signal(signum)
        output, _ = process.communicate(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()

    # Then start() returns and the process exits 0, its consumer gone
    assert "stopped cleanly" in output, output
    assert process.returncode == 0, output
    assert queue_counts(amqp_url, service)[1] == 0


def _consumers(url: str, queue: str) -> int:
    try:
        return queue_counts(url, queue)[1]
    except Exception:  # not declared yet
        return 0
