"""``kitty-tasks health`` on the real broker: a task queue without a consumer is unhealthy."""

from __future__ import annotations

import json

import pytest
from kombu import Connection

from kitty_tasks.core.topology import TASK_QUEUES
from tests.helpers import CeleryWorker, wait_for
from tests.integration.ops_support import cli

pytestmark = [pytest.mark.rabbitmq]


@pytest.mark.slow
def test_health_follows_the_task_queues_consumers(ops_url: str) -> None:
    # Given no worker: every task queue lacks a consumer
    result = cli(ops_url, "health")
    assert result.exit_code == 1
    assert "unhealthy: task queue research.tasks has no consumer (+2 more)" in result.stderr
    assert result.stderr.count("\n") == 1

    # When one worker consumes every task queue
    with CeleryWorker(ops_url, list(TASK_QUEUES), pool="solo"):
        healthy = cli(ops_url, "health")
        as_json = cli(ops_url, "health", "--json")

        # Then health exits 0 and shows each queue with its consumer
        assert healthy.exit_code == 0, healthy.output
        assert healthy.stdout.rstrip().endswith("healthy")
        rows = {line.split()[0]: line.split() for line in healthy.stdout.splitlines() if line}
        for queue in TASK_QUEUES:
            assert rows[queue][1:5] == ["task", "0", "0", "1"]
            assert rows[queue][5] == "ok"
        assert "alarms  none" in healthy.stdout
        report = json.loads(as_json.stdout)
        assert as_json.exit_code == 0
        assert report["healthy"] is True
        assert report["reason"] == "healthy"
        kinds = {q["name"]: q["kind"] for q in report["queues"]}
        assert kinds["research.tasks.dlq"] == "dlq"
        assert kinds["kitty.delay.1s"] == "delay"

    # When the worker is gone, health names the queue again
    after = cli(ops_url, "health", "--json")
    assert after.exit_code == 1
    report = json.loads(after.stdout)
    assert report["healthy"] is False
    assert "task queue research.tasks has no consumer" in report["problems"]


@pytest.mark.slow
def test_dead_letters_warn_and_can_be_made_fatal(ops_url: str) -> None:
    # Given a dead letter in cad.tasks.dlq and a worker on every task queue
    with Connection(ops_url) as connection:
        connection.Producer().publish({"x": 1}, exchange="dlx", routing_key="cad.tasks")
    with CeleryWorker(ops_url, list(TASK_QUEUES), pool="solo"):
        # Then it is a warning by default and a failure with --fail-on-dead-letters
        def warned() -> bool:
            return "cad.tasks.dlq holds 1 dead letter(s)" in cli(ops_url, "health").stdout

        # The management API's numbers lag by its statistics interval.
        wait_for(warned, 20, 0.5, what="the DLQ warning")
        assert cli(ops_url, "health").exit_code == 0
        strict = cli(ops_url, "health", "--fail-on-dead-letters")
        assert strict.exit_code == 1
        assert "unhealthy: cad.tasks.dlq holds 1 dead letter(s)" in strict.stderr


def test_broker_down_is_unhealthy_with_one_line() -> None:
    # When nothing listens at the URL
    result = cli("amqp://guest:guest@127.0.0.1:1//", "health", "--json")

    # Then health exits 1 and says why
    assert result.exit_code == 1
    report = json.loads(result.stdout)
    assert report["healthy"] is False
    assert report["reason"].startswith(
        "cannot connect to the broker at amqp://guest:**@127.0.0.1:1//"
    )
