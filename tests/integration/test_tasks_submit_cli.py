"""``kitty-tasks tasks submit`` against the real broker and a real worker."""

from __future__ import annotations

import json
import subprocess

import pytest
from kombu import Connection

from kitty_tasks.runtime.application import app
from tests.helpers import KITTY_TASKS, ROOT, CeleryWorker, queue_counts
from tests.integration.ops_support import cli

pytestmark = [pytest.mark.rabbitmq]


def test_submit_publishes_with_priority_and_waits_for_the_result(ops_url: str) -> None:
    # Given no worker yet, a submitted task waits in its queue
    queued = cli(ops_url, "tasks", "submit", "cad.generate", "--priority", "9",
                 "--kwargs", '{"shape": "box", "width": 1, "depth": 1, "height": 1}')  # fmt: skip
    assert queued.exit_code == 0, queued.output
    assert queued.stdout.startswith("submitted cad.generate as ")
    assert queue_counts(ops_url, "cad.tasks")[0] == 1
    with Connection(ops_url) as connection:
        queued_message = connection.default_channel.basic_get("cad.tasks", no_ack=True)
    assert queued_message.headers["task"] == "cad.generate"
    assert queued_message.properties["priority"] == 9

    # When a research worker runs and a research task is submitted with --wait
    before = app.conf.broker_url
    with CeleryWorker(ops_url, ["research.tasks"], pool="solo"):
        # A process of its own, as a user runs it: the result comes back to its reply queue.
        kwargs = json.dumps({"query": "gearbox", "max_results": 2})
        done = subprocess.run(
            [KITTY_TASKS, "--url", ops_url, "tasks", "submit", "research.paper", "--priority",
             "5", "--kwargs", kwargs, "--wait", "30", "--json"],
            cwd=ROOT, capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip

    # Then its result is printed, and the test process's app still points where it did
    assert done.returncode == 0, done.stderr
    answer = json.loads(done.stdout)
    assert answer["state"] == "SUCCESS"
    assert answer["result"]["query"] == "gearbox"
    assert len(answer["result"]["results"]) <= 2
    assert app.conf.broker_url == before
