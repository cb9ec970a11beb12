"""``kitty-tasks tasks submit`` against the real broker and a real worker."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from kombu import Connection

from kitty_tasks.runtime.application import app
from tests.helpers import KITTY_TASKS, ROOT, CeleryWorker, queue_counts
from tests.integration import tasks_for_tests  # noqa: F401 - registers research.plain_fails
from tests.integration.ops_support import cli

pytestmark = [pytest.mark.rabbitmq]

TEST_TASKS = "tests.integration.tasks_for_tests"


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

    # Then its result is printed (read from the result store), and the app is left as it was
    assert done.returncode == 0, done.stderr
    answer = json.loads(done.stdout)
    assert answer["state"] == "SUCCESS"
    assert answer["result"]["query"] == "gearbox"
    assert len(answer["result"]["results"]) <= 2
    assert app.conf.broker_url == before


def test_submit_takes_positional_args_and_exits_non_zero_when_the_task_fails(
    ops_url: str, tmp_path: Path
) -> None:
    # Given a worker with the test tasks
    with CeleryWorker(ops_url, ["research.tasks"], pool="solo", include=[TEST_TASKS]):
        # When a task is submitted with --args and --wait, and then one that fails
        ok = cli(ops_url, "tasks", "submit", "research.paper", "--args", '["3d printing"]',
                 "--kwargs", '{"max_results": 1}', "--wait", "30")  # fmt: skip
        log = json.dumps([str(tmp_path / "runs.log")])
        failed = cli(ops_url, "tasks", "submit", "research.plain_fails", "--args", log,
                     "--wait", "30")  # fmt: skip

    # Then the success exits 0 with the value, the failure 1 with the error
    assert ok.exit_code == 0, ok.output
    assert ok.stdout.splitlines()[1].startswith('SUCCESS: {"query": "3d printing"')
    assert failed.exit_code == 1, failed.output
    assert failed.stdout.splitlines()[1] == (
        "FAILURE after 1 attempt(s): ValueError: plain failure on run 1"
    )


@pytest.mark.parametrize(
    ("arguments", "problem"),
    [
        (["--kwargs", '{"max_results": 2}'], "missing a required argument: 'query'"),
        (["--args", '["a", 2, null, "extra"]'], "too many positional arguments"),
        (
            ["--kwargs", '{"query": "a", "colour": "red"}'],
            "got an unexpected keyword argument 'colour'",
        ),
    ],
)
def test_a_wrong_signature_is_one_line_with_exit_code_2_and_nothing_sent(
    ops_url: str, arguments: list[str], problem: str
) -> None:
    done = subprocess.run(
        [KITTY_TASKS, "--url", ops_url, "tasks", "submit", "research.paper", *arguments],
        cwd=ROOT, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 2
    assert done.stderr.splitlines() == [
        f"Error: research.paper cannot take these arguments: {problem}"
    ]
    assert queue_counts(ops_url, "research.tasks")[0] == 0


def test_args_must_be_a_json_list(ops_url: str) -> None:
    done = cli(ops_url, "tasks", "submit", "research.paper", "--args", '{"query": "a"}')
    assert done.exit_code == 2
    assert "Invalid value for --args: must be a JSON list" in done.output
