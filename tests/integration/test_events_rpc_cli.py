"""``events publish|tail`` and ``rpc call`` from the command line, against the real broker."""

from __future__ import annotations

import json
import os
import subprocess
import threading
from typing import Any

import pytest

from rpc import RPCServer
from tests.helpers import KITTY_TASKS, ROOT
from tests.integration.ops_support import cli

pytestmark = [pytest.mark.rabbitmq]


def test_tail_prints_what_publish_sends(ops_url: str) -> None:
    # Given `events tail` listening for fabrication events
    tail = subprocess.Popen(
        [KITTY_TASKS, "--url", ops_url, "events", "tail", "fabrication.#", "--count", "1",
         "--timeout", "20", "--json"],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=dict(os.environ), text=True,
    )  # fmt: skip
    try:
        # It says so on stderr once its queue is bound; publish only then.
        assert tail.stderr is not None
        assert tail.stderr.readline().startswith("listening for 'fabrication.#'")

        # When an event is published from the command line
        sent = cli(ops_url, "events", "publish", "fabrication.print.started",
                   "--data", '{"job": "j-1"}', "--json")  # fmt: skip
        assert sent.exit_code == 0, sent.output
        event = json.loads(sent.stdout)

        # Then the tail prints it, and stops after its one event
        out, _ = tail.communicate(timeout=30)
    finally:
        if tail.poll() is None:
            tail.kill()
    (line,) = out.strip().splitlines()
    seen = json.loads(line)
    assert seen["event_id"] == event["event_id"]
    assert seen["event_type"] == "fabrication.print.started"
    assert seen["source"] == "kitty-cli"
    assert seen["data"] == {"job": "j-1"}
    assert tail.returncode == 0


def test_rpc_call_prints_the_result_and_remote_errors_are_one_line(ops_url: str) -> None:
    # Given an RPC server for math.rpc
    server = RPCServer(ops_url, "math.rpc")

    def add(request: dict[str, Any]) -> dict[str, Any]:
        if "a" not in request:
            raise ValueError("a is required")
        return {"sum": request["a"] + request["b"]}

    server.register_handler(add)
    thread = threading.Thread(target=server.start, daemon=True)
    thread.start()
    try:
        assert server.wait_ready(20)

        # When it is called from the command line
        ok = cli(ops_url, "rpc", "call", "math.rpc", "--payload", '{"a": 5, "b": 3}', "--json")
        bad = cli(ops_url, "rpc", "call", "math.rpc", "--payload", '{"b": 3}', "--timeout", "10")
        nobody = cli(ops_url, "rpc", "call", "nobody.rpc", "--timeout", "10")
    finally:
        server.stop(5)
        thread.join(10)

    # Then the result is printed; a remote error and a missing service are one line, exit 1
    assert ok.exit_code == 0, ok.output
    assert json.loads(ok.stdout)["result"] == {"sum": 8}
    assert bad.exit_code == 1
    assert "ValueError: a is required" in bad.output
    assert len(bad.output.strip().splitlines()) == 1
    assert nobody.exit_code == 1
    assert "nobody.rpc" in nobody.output
    assert len(nobody.output.strip().splitlines()) == 1
