"""Celery tasks on the real broker: priorities, the retry ladder, dead letters, poison messages."""

from __future__ import annotations

import itertools
import json
import pickle
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from amqp import Message
from kombu import Connection

from kitty_tasks import app
from kitty_tasks.core.errors import InvalidInput
from kitty_tasks.core.topology import (
    CAD_TASKS,
    H_ATTEMPTS,
    H_ERROR_MESSAGE,
    H_ERROR_TYPE,
    H_ORIGINAL_QUEUE,
    RESEARCH_TASKS,
    TASKS_EXCHANGE,
    TOPOLOGY,
    delay_exchange_name,
    dlq_name,
)
from kitty_tasks.tasks.cad import cad_generate
from kitty_tasks.tasks.research import research_paper
from tests.helpers import CeleryWorker, queue_counts, wait_for
from tests.integration import tasks_for_tests

pytestmark = pytest.mark.rabbitmq

TEST_TASKS = "tests.integration.tasks_for_tests"
#: A quick ladder for tests: waits of ~0.25 s, ~1 s, ~4 s instead of 1 s, 4 s, 16 s.
FAST_LADDER = {"KITTY_RETRY_BACKOFF_BASE": "0.25"}


def drain(url: str, queue: str) -> list[Any]:
    """Take every message out of ``queue`` (acked) and return them."""
    messages = []
    with Connection(url) as connection:
        channel = connection.default_channel
        while (message := channel.basic_get(queue, no_ack=True)) is not None:
            messages.append(message)
    return messages


def runs_in(path: Path) -> list[tuple[float, int]]:
    """(timestamp, retries) of each recorded run."""
    if not path.exists():
        return []
    return [(float(t), int(r)) for t, r in (line.split() for line in path.read_text().splitlines())]


@pytest.fixture
def research_queue(amqp_url: str) -> Iterator[str]:
    """An empty research.tasks and its DLQ, emptied again afterwards."""
    for queue in (RESEARCH_TASKS, dlq_name(RESEARCH_TASKS)):
        drain(amqp_url, queue)
    yield RESEARCH_TASKS
    for queue in (RESEARCH_TASKS, dlq_name(RESEARCH_TASKS)):
        drain(amqp_url, queue)


def test_priorities_are_served_highest_first(amqp_url: str, research_queue: str, tmp_path: Path):
    # Given five tasks of mixed priorities queued while no worker runs
    log = tmp_path / "order.log"
    priorities = [0, 9, 3, 7, 5]
    for priority in priorities:
        tasks_for_tests.record_order.apply_async((str(log), str(priority)), priority=priority)
    assert queue_counts(amqp_url, research_queue) == (5, 0)

    # When one worker with prefetch 1 starts
    with CeleryWorker(amqp_url, [research_queue], include=[TEST_TASKS]):
        wait_for(lambda: len(log.read_text().splitlines()) == 5 if log.exists() else False, 30)

    # Then it ran them highest priority first
    assert log.read_text().split() == ["9", "7", "5", "3", "0"]


def test_flaky_task_retries_through_the_delay_ladder(
    amqp_url: str, research_queue: str, tmp_path: Path
):
    # Given a task that fails twice, then succeeds
    log = tmp_path / "runs.log"
    # (the default ladder: the second wait is 2-4 s, long enough to look inside)
    with CeleryWorker(amqp_url, [research_queue], include=[TEST_TASKS]) as worker:
        result = tasks_for_tests.flaky.delay(str(log), 2)

        # While it waits for its second retry, the message sits in a delay queue,
        # and the worker holds nothing (no reserved, no active task).
        wait_for(lambda: len(runs_in(log)) == 2, 30, 0.02, what="the second run")
        held = wait_for(
            lambda: sum(
                queue_counts(amqp_url, spec.name)[0]
                for spec in TOPOLOGY.queues
                if spec.name.startswith("kitty.delay.")
            ),
            5, 0.02, what="the retry in a kitty.delay.* queue",
        )  # fmt: skip
        inspector = app.control.inspect(
            destination=[worker.name.replace("%h", _hostname())], timeout=0.5
        )

        # (the failed run ends once its RETRY state is in the result store, just after the
        # copy is confirmed: a moment later on an SQL store than on rpc://)
        def held_by_worker() -> tuple[dict[str, Any], dict[str, Any]] | None:
            reserved, active = inspector.reserved() or {}, inspector.active() or {}
            idle = reserved and active and not any([*reserved.values(), *active.values()])
            return (reserved, active) if idle else None

        reserved, active = wait_for(held_by_worker, 5, 0.05, what="an idle worker")
        waiting_in_ladder = len(runs_in(log)) == 2

        # Then it runs exactly three times and returns
        assert result.get(timeout=30) == {"runs": 3}

    runs = runs_in(log)
    assert [retries for _, retries in runs] == [0, 1, 2]
    gaps = [b - a for (a, _), (b, _) in itertools.pairwise(runs)]
    assert gaps[1] > gaps[0], f"backoff should grow, gaps were {gaps}"
    assert held == 1
    assert waiting_in_ladder, "the third run came before the worker was inspected"
    assert reserved, "the worker did not answer inspect().reserved()"
    assert all(not tasks for tasks in reserved.values()), reserved
    assert active, "the worker did not answer inspect().active()"
    assert all(not tasks for tasks in active.values()), active


def _hostname() -> str:
    import socket

    return socket.gethostname()


def test_always_failing_task_ends_in_the_dlq_with_the_reason(
    amqp_url: str, research_queue: str, tmp_path: Path
):
    # Given a task that always raises ValueError and the default of 3 retries
    log = tmp_path / "runs.log"
    with CeleryWorker(amqp_url, [research_queue], include=[TEST_TASKS], env=FAST_LADDER):
        result = tasks_for_tests.always_fails.delay(str(log))

        # When it has used up its retries
        with pytest.raises(ValueError, match="bad input on run 4"):
            result.get(timeout=60)
        wait_for(lambda: queue_counts(amqp_url, dlq_name(research_queue))[0] == 1, 10)

    # Then it ran max_retries + 1 times and its message waits in research.tasks.dlq
    assert len(runs_in(log)) == 4
    [dead] = drain(amqp_url, dlq_name(research_queue))
    headers = dead.headers
    assert headers["id"] == result.id
    assert headers["task"] == "research.always_fails"
    assert headers[H_ERROR_TYPE] == "ValueError"
    assert headers[H_ERROR_MESSAGE] == "bad input on run 4"
    assert headers[H_ATTEMPTS] == 4
    assert headers[H_ORIGINAL_QUEUE] == research_queue
    assert queue_counts(amqp_url, research_queue)[0] == 0


def test_permanent_and_invalid_input_dead_letter_without_retry(
    amqp_url: str, research_queue: str, tmp_path: Path
):
    log = tmp_path / "runs.log"
    with CeleryWorker(amqp_url, [research_queue], include=[TEST_TASKS]):
        # Given a task raising Permanent, and research_paper with an empty query
        permanent = tasks_for_tests.permanent.delay(str(log))
        invalid = research_paper.delay("")
        with pytest.raises(Exception, match="never succeed"):
            permanent.get(timeout=30)
        with pytest.raises(InvalidInput, match="query"):
            invalid.get(timeout=30)
        wait_for(lambda: queue_counts(amqp_url, dlq_name(research_queue))[0] == 2, 10)

    # Then each ran once and both are in the DLQ with their error types
    assert len(log.read_text().splitlines()) == 1
    dead = {m.headers["id"]: m.headers for m in drain(amqp_url, dlq_name(research_queue))}
    assert dead[permanent.id][H_ERROR_TYPE] == "Permanent"
    assert dead[permanent.id][H_ATTEMPTS] == 1
    assert dead[invalid.id][H_ERROR_TYPE] == "InvalidInput"


def test_poison_messages_end_in_the_dlq_and_the_worker_keeps_working(
    amqp_url: str, research_queue: str
):
    poison = {
        "not-json": Message(b"{this is not json", content_type="application/json"),
        "pickle": Message(
            pickle.dumps({"task": "research.paper"}),
            content_type="application/x-python-serialize",
            headers={"task": "research.paper", "id": str(uuid.uuid4())},
        ),
        "unknown-task": Message(
            json.dumps([[], {}, {}]),
            content_type="application/json",
            headers={"task": "research.does_not_exist", "id": str(uuid.uuid4())},
        ),
        "garbage-with-task-header": Message(
            b"\xff\xfe not json",
            content_type="application/json",
            headers={"task": "research.paper", "id": str(uuid.uuid4())},
        ),
    }
    with CeleryWorker(amqp_url, [research_queue]):
        # Given poison published straight into research.tasks
        with Connection(amqp_url) as connection:
            channel = connection.default_channel
            for label, message in poison.items():
                message.properties["message_id"] = label
                channel.basic_publish(message, TASKS_EXCHANGE, research_queue)

        # Then every one of them reaches research.tasks.dlq
        wait_for(
            lambda: queue_counts(amqp_url, dlq_name(research_queue))[0] == len(poison),
            30, what="all poison messages in the DLQ",
        )  # fmt: skip
        # And the worker still serves real work
        assert research_paper.delay("nozzle clog").get(timeout=30)["results"][0]["id"] == (
            "nozzle-clog"
        )
    dead = drain(amqp_url, dlq_name(research_queue))
    assert sorted(m.properties["message_id"] for m in dead) == sorted(poison)
    assert all(m.headers["x-death"][0]["reason"] == "rejected" for m in dead)


def test_standalone_worker_processes_delay_and_priority_apply_async(amqp_url: str):
    # Given `celery -A kitty_tasks worker -Q research.tasks,cad.tasks` as a real subprocess
    with CeleryWorker(amqp_url, [RESEARCH_TASKS, CAD_TASKS], concurrency=2):
        # When the brain API calls the tasks the Celery way
        research = research_paper.delay("3D printing failure detection", max_results=3)
        cad = cad_generate.apply_async(kwargs={"primitive": "box", "width": 20}, priority=9)

        # Then both return real results
        ranked = research.get(timeout=30)
        mesh = cad.get(timeout=30)
    assert ranked["results"][0]["id"] == "fdm-failure-camera"
    assert len(ranked["results"]) == 3
    assert mesh["facets"] == 12
    assert mesh["vertices"] == 8
    assert mesh["bounding_box"] == {"min": [0.0, 0.0, 0.0], "max": [20.0, 10.0, 10.0]}
    assert mesh["stl"].startswith("solid kitty_part\n")
    assert mesh["stl"].count("facet normal") == 12


def test_retry_copy_goes_through_the_named_bucket(amqp_url: str):
    # The ladder's exchanges exist and route back by queue name: a message published to
    # the 1 s bucket with key research.tasks.dlq comes back into that queue on its own.
    drain(amqp_url, dlq_name(RESEARCH_TASKS))
    with Connection(amqp_url) as connection:
        channel = connection.default_channel
        channel.basic_publish(Message(b"{}"), delay_exchange_name(1), dlq_name(RESEARCH_TASKS))
    wait_for(lambda: queue_counts(amqp_url, dlq_name(RESEARCH_TASKS))[0] == 1, 10)
    [back] = drain(amqp_url, dlq_name(RESEARCH_TASKS))
    assert back.headers["x-death"][0]["reason"] == "expired"
    assert back.headers["x-death"][0]["queue"] == delay_exchange_name(1)


def test_expired_task_message_is_dead_lettered_by_the_broker(amqp_url: str, research_queue: str):
    # Given a task published with a 100 ms AMQP expiration while no worker runs
    research_paper.apply_async(("stale query",), expiration=0.1)

    # Then the broker moves it to research.tasks.dlq with x-death reason "expired"
    wait_for(lambda: queue_counts(amqp_url, dlq_name(research_queue))[0] == 1, 10)
    [dead] = drain(amqp_url, dlq_name(research_queue))
    assert dead.headers["task"] == "research.paper"
    assert dead.headers["x-death"][0]["reason"] == "expired"
    assert queue_counts(amqp_url, research_queue)[0] == 0


def test_celery_retry_and_autoretry_for_go_through_the_ladder(
    amqp_url: str, research_queue: str, tmp_path: Path
):
    explicit_log, auto_log = tmp_path / "explicit.log", tmp_path / "auto.log"
    with CeleryWorker(amqp_url, [research_queue], include=[TEST_TASKS]):
        # Given a task calling self.retry(countdown=2), and one under autoretry_for
        explicit = tasks_for_tests.explicit_retry.delay(str(explicit_log))
        auto = tasks_for_tests.auto_retry.delay(str(auto_log))

        # Then the countdown is served by the 5 s bucket, not by a worker-held ETA
        wait_for(lambda: queue_counts(amqp_url, delay_exchange_name(5))[0] >= 1, 10)
        assert explicit.get(timeout=30) == 2
        with pytest.raises(KeyError, match="missing field on run 2"):
            auto.get(timeout=30)
        wait_for(lambda: queue_counts(amqp_url, dlq_name(research_queue))[0] == 1, 10)

    # And the autoretry task was dead-lettered once, after max_retries=1 retry
    explicit_runs = runs_in(explicit_log)
    assert [r for _, r in explicit_runs] == [0, 1]
    assert explicit_runs[1][0] - explicit_runs[0][0] >= 1.9
    assert [r for _, r in runs_in(auto_log)] == [0, 1]
    [dead] = drain(amqp_url, dlq_name(research_queue))
    assert dead.headers["id"] == auto.id
    assert dead.headers[H_ERROR_TYPE] == "KeyError"
    assert dead.headers[H_ATTEMPTS] == 2
