"""Bulk submission: groups, chunks, ``TaskQueue.submit_many`` and ``tasks submit --from-file``."""

from __future__ import annotations

import json
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from celery import Task, group
from kombu import Connection

from events import EventBus, TaskCompleted
from kitty_tasks import BatchRejected, PayloadTooLarge, TaskQueue
from kitty_tasks.core.connection import vhost_of
from kitty_tasks.core.management import ManagementClient
from kitty_tasks.core.settings import get_settings
from kitty_tasks.core.topology import BRAIN_COMMANDS, RESEARCH_TASKS, dlq_name
from kitty_tasks.runtime.taskqueue import DISPATCH_TASK, build_app
from kitty_tasks.tasks.research import research_paper
from tests.helpers import CeleryWorker, queue_counts, wait_for
from tests.integration import tasks_for_tests
from tests.integration.events_helpers import Collector, consuming, purge, unique
from tests.integration.ops_support import cli, own_vhost

pytestmark = pytest.mark.rabbitmq

TEST_TASKS = "tests.integration.tasks_for_tests"
#: research.tasks holds this many in the overflow tests (a policy; the topology says 10,000).
SMALL = 5


def queued(url: str, queue: str) -> list[Any]:
    """Every message in ``queue``, taken out (acked)."""
    with Connection(url) as connection:
        channel = connection.default_channel
        messages = []
        while (message := channel.basic_get(queue, no_ack=True)) is not None:
            messages.append(message)
    return messages


@pytest.fixture
def small_research(management_client: ManagementClient) -> Iterator[str]:
    """A vhost of its own whose research.tasks takes only SMALL messages (then reject-publish)."""
    with own_vhost(management_client) as url:
        vhost = urllib.parse.quote(vhost_of(url), safe="")
        management_client.request(
            "PUT",
            f"policies/{vhost}/small-research",
            {"pattern": r"^research\.tasks$", "definition": {"max-length": SMALL},
             "apply-to": "queues"},
        )  # fmt: skip

        def applied() -> bool:
            info = management_client.get(f"queues/{vhost}/{RESEARCH_TASKS}") or {}
            return (info.get("effective_policy_definition") or {}).get("max-length") == SMALL

        wait_for(applied, 10, 0.05, what="the max-length policy on research.tasks")
        yield url


def test_submit_many_overflowing_a_queue_names_the_refused_tasks(small_research: str) -> None:
    # Given research.tasks with room for SMALL messages
    queue = TaskQueue(small_research, RESEARCH_TASKS).connect()
    try:
        # When a batch of SMALL + 3 tasks is submitted at once
        with pytest.raises(BatchRejected) as caught:
            queue.submit_many([("research_paper", {"query": f"q{i}"}) for i in range(SMALL + 3)])
    finally:
        queue.disconnect()

    # Then the error names the three refused tasks, and which were confirmed
    error = caught.value
    assert len(error.refused) == 3, error
    assert len(error.confirmed) == SMALL
    assert not error.unroutable
    assert set(error.refused).isdisjoint(error.confirmed)
    assert all(task_id in str(error) for task_id in error.refused)
    assert error.queue == RESEARCH_TASKS
    # And exactly the confirmed tasks are in the queue
    in_queue = [m.properties["correlation_id"] for m in queued(small_research, RESEARCH_TASKS)]
    assert sorted(in_queue) == sorted(error.confirmed)


def test_a_group_overflowing_a_queue_names_the_refused_tasks(small_research: str) -> None:
    # Given an app on that vhost and a group of SMALL + 2 facade tasks
    app = build_app(small_research, {})
    dispatch = app.tasks[DISPATCH_TASK]
    tasks = group(
        dispatch.s("research_paper", {"query": f"q{i}"}).set(queue=RESEARCH_TASKS)
        for i in range(SMALL + 2)
    )

    # When the group is applied
    with pytest.raises(BatchRejected) as caught:
        tasks.apply_async()

    # Then two are refused, and every task reported as confirmed is in the queue
    error = caught.value
    assert (len(error.refused), len(error.confirmed)) == (2, SMALL)
    in_queue = [m.properties["correlation_id"] for m in queued(small_research, RESEARCH_TASKS)]
    assert sorted(in_queue) == sorted(error.confirmed)


@pytest.fixture
def research_worker(amqp_url: str) -> Iterator[CeleryWorker]:
    """A worker on an empty research.tasks, retries waiting ~0.1 s in the ladder."""
    for name in (RESEARCH_TASKS, dlq_name(RESEARCH_TASKS)):
        purge(amqp_url, name)
    with CeleryWorker(
        amqp_url, [RESEARCH_TASKS], include=[TEST_TASKS],
        env={"KITTY_RETRY_BACKOFF_BASE": "0.1"},
    ) as worker:  # fmt: skip
        yield worker


def test_every_task_of_a_group_retries_stores_its_result_and_reports_completion(
    amqp_url: str, research_worker: CeleryWorker, tmp_path: Path
) -> None:
    # Given a subscriber to the research lifecycle events
    collector = Collector()

    bus = EventBus(amqp_url, source=unique("batch-watcher"))
    bus.connect()
    bus.subscribe("research.task.#", collector)
    with consuming(bus):
        # When a group of three tasks, each failing once, is applied
        logs = [str(tmp_path / f"runs-{i}") for i in range(3)]
        result = group(tasks_for_tests.flaky.s(log, 1) for log in logs).apply_async()

        # Then each retried through the ladder and succeeded on its second run
        assert result.get(timeout=60) == [{"runs": 2}] * 3
        ids = [r.id for r in result.results]

        # And each one's completion was published, with its two attempts
        def completed() -> dict[str, TaskCompleted]:
            done = {}
            for event in list(collector.events):
                data = event.parse()
                if isinstance(data, TaskCompleted) and data.task_id in ids:
                    done[data.task_id] = data
            return done

        collector.wait_for(lambda _: len(completed()) == 3)
    assert sorted(completed()) == sorted(ids)
    assert {data.attempts for data in completed().values()} == {2}


def test_submit_many_tasks_are_served_and_their_results_read(
    amqp_url: str, research_worker: CeleryWorker
) -> None:
    # When the facade submits three research papers in one batch
    queue = TaskQueue(amqp_url, RESEARCH_TASKS).connect()
    try:
        ids = queue.submit_many(
            [
                ("research_paper", {"query": "nozzle clog", "max_results": 1}),
                {"task_type": "research_paper", "data": {"query": "warping"}, "priority": 9},
                ("research_paper", {"query": "bed adhesion", "max_results": 2}),
            ]
        )
        # Then the ids come back in order, and each task's result is in the store
        answers = [queue.result(task_id, timeout=30) for task_id in ids]
    finally:
        queue.disconnect()
    assert len(set(ids)) == 3
    assert [a["query"] for a in answers] == ["nozzle clog", "warping", "bed adhesion"]


def test_a_directly_published_task_is_the_message_celery_publishes(amqp_url: str) -> None:
    # Given an empty research.tasks
    purge(amqp_url, RESEARCH_TASKS)

    # When the same call goes through the platform and through Celery's own apply_async
    ours = research_paper.apply_async(("nozzle",), {"max_results": 3}, priority=4)
    celerys = Task.apply_async(research_paper, ("nozzle",), {"max_results": 3}, priority=4)
    mine, theirs = queued(amqp_url, RESEARCH_TASKS)

    # Then both are the same protocol-2 message but for the ids, times and our message_id
    varying = {"id", "root_id", "x-kitty-published-at"}
    assert mine.body == theirs.body
    assert {k: v for k, v in mine.headers.items() if k not in varying} == {
        k: v for k, v in theirs.headers.items() if k not in varying
    }
    assert mine.properties["correlation_id"] == ours.id
    assert theirs.properties["correlation_id"] == celerys.id
    assert mine.properties.pop("message_id") == ours.id
    for name in ("correlation_id", "application_headers"):
        mine.properties.pop(name)
        theirs.properties.pop(name)
    assert mine.properties == theirs.properties
    assert mine.delivery_info["routing_key"] == theirs.delivery_info["routing_key"]


def test_arguments_over_the_limit_are_refused_and_at_the_limit_sent(amqp_url: str) -> None:
    # Given an empty research.tasks and arguments of exactly the limit as JSON: the message
    # body, which also carries Celery's callbacks, is larger
    purge(amqp_url, RESEARCH_TASKS)
    limit = get_settings().max_message_bytes
    at_limit = "a" * (limit - len('[[""], {}]'))

    # When a group holds one task over the limit, Then nothing of it is sent
    with pytest.raises(PayloadTooLarge, match="KITTY_MAX_MESSAGE_BYTES"):
        group([research_paper.s("ok"), research_paper.s(at_limit + "a")]).apply_async()
    # and a single task over the limit is refused too
    with pytest.raises(PayloadTooLarge, match="KITTY_MAX_MESSAGE_BYTES"):
        research_paper.apply_async((at_limit + "a",))
    assert queued(amqp_url, RESEARCH_TASKS) == []

    # When the arguments are exactly at the limit, Then the task is sent
    sent = research_paper.apply_async((at_limit,))
    assert [m.headers["id"] for m in queued(amqp_url, RESEARCH_TASKS)] == [sent.id]


def test_chunks_publish_their_parts_in_one_batch(amqp_url: str, tmp_path: Path) -> None:
    # When four calls are sent as chunks of two
    purge(amqp_url, BRAIN_COMMANDS)
    log = str(tmp_path / "order")
    result = tasks_for_tests.record_order.chunks([(log, str(i)) for i in range(4)], 2)
    applied = result.apply_async()

    # Then two celery.starmap messages wait, with the group's ids
    messages = queued(amqp_url, BRAIN_COMMANDS)
    assert [m.headers["task"] for m in messages] == ["celery.starmap"] * 2
    assert sorted(m.headers["id"] for m in messages) == sorted(r.id for r in applied.results)


def test_the_cli_submits_a_jsonl_file_in_one_batch(ops_url: str, tmp_path: Path) -> None:
    # Given a file of three tasks, one with a priority
    lines = [
        {"task": "research.paper", "kwargs": {"query": "gearbox"}},
        {"task": "research.paper", "args": ["extruder"], "priority": 7},
        {"task": "cad.generate", "kwargs": {"shape": "box", "width": 1, "depth": 1, "height": 1}},
    ]
    path = tmp_path / "tasks.jsonl"
    path.write_text("\n".join(json.dumps(line) for line in lines) + "\n")

    # When it is submitted
    done = cli(ops_url, "tasks", "submit", "--from-file", str(path), "--json")

    # Then every task id is printed and every task is queued where its route says
    assert done.exit_code == 0, done.output
    submitted = json.loads(done.stdout)
    assert [s["task"] for s in submitted] == ["research.paper", "research.paper", "cad.generate"]
    research = queued(ops_url, RESEARCH_TASKS)
    # (the priority-7 task first: research.tasks is a priority queue)
    assert [m.headers["id"] for m in research] == [s["task_id"] for s in submitted[1::-1]]
    assert queue_counts(ops_url, "cad.tasks")[0] == 1


def test_the_cli_publishes_nothing_when_a_line_is_wrong(ops_url: str, tmp_path: Path) -> None:
    # Given a file whose second line names an unknown task
    path = tmp_path / "tasks.jsonl"
    path.write_text('{"task": "research.paper", "args": ["a"]}\n{"task": "nope"}\n')

    # When it is submitted, then it fails naming the line, and nothing is queued
    done = cli(ops_url, "tasks", "submit", "--from-file", str(path))
    assert done.exit_code == 2, done.output
    assert "line 2" in done.output
    assert queue_counts(ops_url, RESEARCH_TASKS)[0] == 0
