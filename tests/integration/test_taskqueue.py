"""The KITT guide's TaskQueue examples, run as written against the real broker."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from amqp import Message
from kombu import Connection

from kitty_tasks import PayloadTooLarge, PublishRejected, TaskQueue
from kitty_tasks.core.topology import (
    CAD_TASKS,
    H_ERROR_MESSAGE,
    H_ERROR_TYPE,
    RESEARCH_TASKS,
    TASKS_EXCHANGE,
    TOPOLOGY,
    dlq_name,
)
from kitty_tasks.tasks.cad import cad_generate
from tests.helpers import ROOT, CeleryWorker, queue_counts, wait_for
from tests.integration.test_tasks import drain

pytestmark = pytest.mark.rabbitmq

# The guide's worker, as written; only the import line and the URL differ, and the
# placeholder `[...]` (not JSON) became a real list.
GUIDE_WORKER = textwrap.dedent(
    """
    import os
    from kitty_tasks import TaskQueue

    RABBITMQ_URL = os.environ["RABBITMQ_URL"]
    seen = open(os.environ["SEEN_FILE"], "a", buffering=1)

    # Worker
    def process_research(task):
        print(f"Researching: {task.data['query']}")
        seen.write(json.dumps([task.task_id, task.retry_count, task.max_retries]) + "\\n")
        if task.data.get("fail_first") and task.retry_count == 0:
            raise ConnectionError("search backend unavailable")
        return {"results": [task.data["query"].upper()]}

    import json
    queue = TaskQueue(RABBITMQ_URL, "research.tasks")
    queue.connect()
    queue.register_handler("research_paper", process_research)
    queue.start_worker(prefetch_count=2)  # Blocking, process 2 tasks in parallel
    """
)


@pytest.fixture
def guide_worker(amqp_url: str, tmp_path: Path):
    """The guide's worker script in a subprocess; yields the file where it records tasks."""
    drain(amqp_url, RESEARCH_TASKS)
    drain(amqp_url, dlq_name(RESEARCH_TASKS))
    script = tmp_path / "worker.py"
    script.write_text(GUIDE_WORKER)
    seen = tmp_path / "seen.jsonl"
    log = (tmp_path / "worker.log").open("wb")
    env = {**os.environ, "RABBITMQ_URL": amqp_url, "SEEN_FILE": str(seen), "PYTHONPATH": str(ROOT)}
    process = subprocess.Popen(
        [sys.executable, str(script)], env=env, stdout=log, stderr=subprocess.STDOUT, cwd=tmp_path
    )
    wait_for(lambda: queue_counts(amqp_url, RESEARCH_TASKS)[1] == 1, 60, 0.25)
    yield process, seen
    if process.poll() is None:
        process.send_signal(signal.SIGINT)
        process.wait(30)
    log.close()


def seen_tasks(path: Path) -> list[list[object]]:
    """What the guide worker recorded: [task_id, retry_count, max_retries] per run."""
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def test_guide_producer_and_worker(amqp_url: str, guide_worker, tmp_path: Path):
    process, seen = guide_worker

    # Producer, as the guide writes it
    queue = TaskQueue(amqp_url, "research.tasks")
    queue.connect()
    task_id = queue.submit(
        task_type="research_paper",
        data={"query": "3D printing failure detection"},
        priority=7,  # 0-10 scale
        max_retries=3,
    )
    assert queue.result(task_id, timeout=30) == {"results": ["3D PRINTING FAILURE DETECTION"]}
    queue.disconnect()

    # The handler saw the guide's task attributes
    assert seen_tasks(seen) == [[task_id, 0, 3]]

    # And Ctrl-C stops the worker cleanly
    process.send_signal(signal.SIGINT)
    assert process.wait(30) == 0
    assert queue_counts(amqp_url, RESEARCH_TASKS) == (0, 0)


def test_failed_handler_is_retried_with_its_retry_count(amqp_url: str, guide_worker):
    _, seen = guide_worker
    with TaskQueue(amqp_url, "research.tasks") as queue:
        task_id = queue.submit(
            "research_paper", {"query": "warping", "fail_first": True}, priority=3, max_retries=1
        )
        assert queue.result(task_id, timeout=30) == {"results": ["WARPING"]}
    assert seen_tasks(seen) == [[task_id, 0, 1], [task_id, 1, 1]]


def test_unregistered_task_type_is_dead_lettered_with_the_reason(amqp_url: str, guide_worker):
    with TaskQueue(amqp_url, "research.tasks") as queue:
        task_id = queue.submit("translate_paper", {"query": "x"})
        with pytest.raises(
            Exception, match=r"no handler registered for task type 'translate_paper'"
        ):
            queue.result(task_id, timeout=30)
    wait_for(lambda: queue_counts(amqp_url, dlq_name(RESEARCH_TASKS))[0] == 1, 10)
    [dead] = drain(amqp_url, dlq_name(RESEARCH_TASKS))
    assert dead.headers["id"] == task_id
    assert dead.headers[H_ERROR_TYPE] == "Permanent"
    assert "translate_paper" in dead.headers[H_ERROR_MESSAGE]


def test_plain_celery_worker_serves_guide_submissions_of_builtin_types(amqp_url: str):
    drain(amqp_url, RESEARCH_TASKS)
    with CeleryWorker(amqp_url, [RESEARCH_TASKS]), TaskQueue(amqp_url, "research.tasks") as queue:
        task_id = queue.submit(
            task_type="research_paper",
            data={"query": "autonomous 3D printing failure detection", "max_results": 10},
            priority=8,
        )
        result = queue.result(task_id, timeout=30)
    assert result["searched"] == 12
    assert result["results"][0]["id"] in {"fdm-failure-camera", "autonomous-farm"}


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"task_type": "", "data": {}}, ValueError, "task_type"),
        ({"task_type": "x", "data": [1, 2]}, TypeError, "JSON object"),
        ({"task_type": "x", "data": {"v": float("nan")}}, TypeError, "JSON"),
        ({"task_type": "x", "data": {"v": object()}}, TypeError, "JSON"),
        ({"task_type": "x", "data": {}, "priority": 11}, ValueError, "priority"),
        ({"task_type": "x", "data": {}, "priority": -1}, ValueError, "priority"),
        ({"task_type": "x", "data": {}, "max_retries": -1}, ValueError, "max_retries"),
        ({"task_type": "x", "data": {"blob": "x" * (1024 * 1024 + 1)}}, PayloadTooLarge, "over"),
    ],
)
def test_bad_submissions_are_refused_before_sending(amqp_url: str, kwargs, error, match):
    before = queue_counts(amqp_url, RESEARCH_TASKS)[0]
    with TaskQueue(amqp_url, "research.tasks") as queue, pytest.raises(error, match=match):
        queue.submit(**kwargs)
    assert queue_counts(amqp_url, RESEARCH_TASKS)[0] == before


def test_unknown_queue_is_refused():
    with pytest.raises(ValueError, match=r"unknown task queue 'research\.task'"):
        TaskQueue("amqp://guest:guest@localhost:5672//", "research.task")


def test_full_queue_raises_publish_rejected_and_keeps_what_it_holds(amqp_url: str):
    # Given cad.tasks filled to its max-length (reject-publish) while no worker runs
    drain(amqp_url, CAD_TASKS)
    limit = TOPOLOGY.queue(CAD_TASKS).arguments["x-max-length"]
    with Connection(amqp_url) as connection:
        channel = connection.default_channel
        for i in range(limit):
            channel.basic_publish(Message(b"{}", message_id=str(i)), TASKS_EXCHANGE, CAD_TASKS)
    wait_for(lambda: queue_counts(amqp_url, CAD_TASKS)[0] == limit, 30)

    # When the brain publishes one more task, the Celery way and the guide's way
    with pytest.raises(PublishRejected, match=r"cad\.tasks") as celery_refused:
        cad_generate.apply_async(kwargs={"primitive": "box"})
    with (
        TaskQueue(amqp_url, "cad.tasks") as queue,
        pytest.raises(PublishRejected, match=r"cad\.tasks"),
    ):
        queue.submit("cad_generate", {"primitive": "box"})

    # Then the error names the queue, and nothing already queued was lost
    assert celery_refused.value.queue == CAD_TASKS
    assert queue_counts(amqp_url, CAD_TASKS)[0] == limit
    drain(amqp_url, CAD_TASKS)
