"""Task lifecycle events on the real broker: completed, dead-lettered, off, unpublishable."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
from kombu import Connection

from events import Event, EventBus, TaskCompleted, TaskFailed
from kitty_tasks import TaskQueue
from kitty_tasks.core.connection import vhost_of
from kitty_tasks.core.management import ManagementClient
from kitty_tasks.core.topology import (
    CAD_TASKS,
    EVENTS_EXCHANGE,
    RESEARCH_TASKS,
    dlq_name,
)
from kitty_tasks.runtime.application import app
from kitty_tasks.runtime.lifecycle_data import INLINE_RESULT_BYTES
from kitty_tasks.tasks.research import research_paper
from tests.helpers import ROOT, CeleryWorker, queue_counts, wait_for
from tests.integration import tasks_for_tests
from tests.integration.events_helpers import Collector, consuming, purge, unique
from tests.integration.ops_support import free_port, sample, scrape

pytestmark = pytest.mark.rabbitmq

TEST_TASKS = "tests.integration.tasks_for_tests"
#: Retries wait ~0.1 s in the ladder instead of ~1 s.
FAST_LADDER = {"KITTY_RETRY_BACKOFF_BASE": "0.1"}
#: A TaskQueue worker as the KITT guide writes one, on cad.tasks.
HANDLER_WORKER = textwrap.dedent(
    """
    import os
    from kitty_tasks import TaskQueue

    queue = TaskQueue(os.environ["RABBITMQ_URL"], "cad.tasks")
    queue.register_handler("cube_volume", lambda task: {"volume": task.data["side"] ** 3})
    queue.start_worker()
    """
)


@pytest.fixture(scope="module")
def worker(amqp_url: str) -> Iterator[CeleryWorker]:
    """One prefork worker (one child) on an empty research.tasks, with a fast retry ladder."""
    for queue in (RESEARCH_TASKS, dlq_name(RESEARCH_TASKS)):
        purge(amqp_url, queue)
    with CeleryWorker(amqp_url, [RESEARCH_TASKS], include=[TEST_TASKS], env=FAST_LADDER) as w:
        yield w
    purge(amqp_url, dlq_name(RESEARCH_TASKS))


@pytest.fixture
def research_events(amqp_url: str) -> Iterator[Collector]:
    """A subscriber on ``research.task.#``, through the platform's EventBus."""
    collector = Collector()
    bus = EventBus(amqp_url, source=unique("lifecycle-watcher"))
    bus.connect()
    bus.subscribe("research.task.#", collector)
    with consuming(bus):
        yield collector


def events_of(collector: Collector, task_id: str) -> list[Event]:
    """The lifecycle events received so far for ``task_id``, in order."""
    return [e for e in list(collector.events) if e.data.get("task_id") == task_id]


def test_a_research_paper_task_publishes_research_task_completed_with_its_result(
    worker: CeleryWorker, research_events: Collector
) -> None:
    # When a real research.paper task runs in a real worker
    async_result = research_paper.apply_async(("3d printing failure detection",))
    returned = async_result.get(timeout=30)

    # Then a subscriber on research.task.# receives research.task.completed for it
    research_events.wait_for(lambda _: bool(events_of(research_events, async_result.id)))
    [event] = events_of(research_events, async_result.id)
    assert event.event_type == "research.task.completed"
    data = event.parse()
    assert isinstance(data, TaskCompleted)
    assert data.task_id == async_result.id
    assert data.task == "research.paper"
    assert data.queue == RESEARCH_TASKS
    assert data.attempts == 1
    assert data.runtime >= 0
    assert data.result == returned
    assert data.result_summary is None
    # And it names the worker and keeps the task's correlation id (Celery's: the task id)
    assert event.source.startswith(worker.name.split("@", 1)[0] + "@")
    assert event.correlation_id == async_result.id
    # And, as every event the EventBus publishes, carries the broker user that sent it
    assert event.publisher == Connection(worker.url).userid


def test_a_large_result_is_summarised_and_left_to_the_result_store(
    worker: CeleryWorker, research_events: Collector
) -> None:
    # When a task returns a result larger than an event carries
    size = INLINE_RESULT_BYTES * 4
    async_result = tasks_for_tests.big_result.apply_async((size,))
    assert len(async_result.get(timeout=30)) == size

    # Then its completed event has a summary instead of the result
    research_events.wait_for(lambda _: bool(events_of(research_events, async_result.id)))
    [event] = events_of(research_events, async_result.id)
    data = event.parse()
    assert isinstance(data, TaskCompleted)
    assert data.result is None
    assert data.result_summary is not None
    assert data.result_summary.type == "string"
    assert data.result_summary.size == size + 2  # the JSON string's quotes
    assert "result store" in data.result_summary.note
    assert len(event.encode()) < 2048


def test_a_task_out_of_retries_publishes_research_task_dead_lettered_and_no_retry_event(
    worker: CeleryWorker, research_events: Collector, tmp_path: Path
) -> None:
    # When a task with one retry allowed fails twice (autoretry_for=KeyError, max_retries=1)
    async_result = tasks_for_tests.auto_retry.apply_async((str(tmp_path / "runs"),))

    # Then research.task.dead_lettered arrives, after both attempts, with the last error
    research_events.wait_for(lambda _: bool(events_of(research_events, async_result.id)))
    [event] = events_of(research_events, async_result.id)  # the retry published nothing
    assert event.event_type == "research.task.dead_lettered"
    data = event.parse()
    assert isinstance(data, TaskFailed)
    assert data.task == "research.auto_retry"
    assert data.attempts == 2
    assert data.error.type == "KeyError"
    assert "missing field on run 2" in data.error.message
    # And the task's message is in its DLQ, as before
    wait_for(lambda: queue_counts(worker.url, dlq_name(RESEARCH_TASKS))[0] >= 1, 20)


def test_tasks_with_events_switched_off_and_eager_calls_publish_none(
    worker: CeleryWorker, research_events: Collector
) -> None:
    # Given an eager run in this process and a worker run of a task that switched them off
    eager = research_paper.apply(("eager query",))
    assert eager.successful()
    quiet = tasks_for_tests.quiet.apply_async(("quiet",))
    assert quiet.get(timeout=30) == "quiet"

    # When a task with events on runs after them
    loud = research_paper.apply_async(("loud query",))
    loud.get(timeout=30)
    research_events.wait_for(lambda _: bool(events_of(research_events, loud.id)))

    # Then only the last one's event arrived: the earlier ones would have come first
    received = [e.data["task_id"] for e in research_events.events]
    assert eager.id not in received
    assert quiet.id not in received
    assert received[-1] == loud.id


def test_a_taskqueue_handler_publishes_under_its_queue_domain(
    amqp_url: str, tmp_path: Path
) -> None:
    # Given a subscriber on cad.task.# and the guide's TaskQueue worker on cad.tasks
    purge(amqp_url, CAD_TASKS)
    collector = Collector()
    bus = EventBus(amqp_url, source=unique("cad-watcher"))
    bus.connect()
    bus.subscribe("cad.task.#", collector)
    script = tmp_path / "worker.py"
    script.write_text(HANDLER_WORKER)
    env = {**os.environ, "RABBITMQ_URL": amqp_url, "PYTHONPATH": str(ROOT)}
    with (tmp_path / "worker.log").open("wb") as log, consuming(bus):
        process = subprocess.Popen([sys.executable, str(script)], env=env, stdout=log, stderr=log)
        try:
            wait_for(lambda: queue_counts(amqp_url, CAD_TASKS)[1] == 1, 60, 0.25)

            # When a task is submitted through the facade and its handler returns
            with TaskQueue(amqp_url, CAD_TASKS) as queue:
                task_id = queue.submit("cube_volume", {"side": 3})

            # Then cad.task.completed carries the handler's return value
            collector.wait_for(lambda _: bool(events_of(collector, task_id)))
        finally:
            process.send_signal(signal.SIGINT)
            process.wait(30)
    [event] = events_of(collector, task_id)
    assert event.event_type == "cad.task.completed"
    assert event.data["task"] == "kitty.dispatch"
    assert event.data["queue"] == CAD_TASKS
    assert event.data["result"] == {"volume": 27}
    assert event.source.startswith("taskqueue-cad.tasks-")


@pytest.mark.slow
def test_an_unpublishable_event_does_not_fail_the_task_and_is_counted(ops_url: str) -> None:
    # Given a vhost whose kitty.events exchange is gone, and a worker serving its metrics
    with Connection(ops_url) as connection:
        connection.default_channel.exchange_delete(EVENTS_EXCHANGE)
    port = free_port()
    labels = {"task": "research.paper", "queue": RESEARCH_TASKS}
    with CeleryWorker(
        ops_url, [RESEARCH_TASKS], pool="solo", env={"KITTY_METRICS_PORT": str(port)}
    ) as worker:
        # When a research.paper task runs there
        with app.connection_for_write(ops_url) as connection:
            task_id = research_paper.apply_async(("query",), connection=connection).id

        # Then the task succeeds and its message is acked, while the event is counted as failed
        wait_for(
            lambda: sample(scrape(port), "kitty_tasks_total", outcome="succeeded", **labels) == 1,
            30, 0.25, what=f"the task to succeed\n{worker.output()}",
        )  # fmt: skip
        failed = sample(
            scrape(port), "kitty_task_events_failed_total", event_type="research.task.completed"
        )
        assert failed == 1
        assert queue_counts(ops_url, RESEARCH_TASKS)[0] == 0
        assert queue_counts(ops_url, dlq_name(RESEARCH_TASKS))[0] == 0
        # And the worker's log names the task and the event type
        warning = next(line for line in worker.output().splitlines() if "not published" in line)
        assert task_id in warning
        assert "research.task.completed" in warning


@pytest.mark.slow
def test_a_task_whose_dead_letter_copy_is_refused_publishes_research_task_failed(
    ops_url: str, management_client: ManagementClient, tmp_path: Path
) -> None:
    # Given a vhost whose research.tasks.dlq refuses every message (a max-length 0 policy)
    vhost = management_client.quote(vhost_of(ops_url))
    dlq = dlq_name(RESEARCH_TASKS)
    management_client.request(
        "PUT", f"policies/{vhost}/refuse-dead-letters",
        {"pattern": f"^{re.escape(dlq)}$", "apply-to": "queues",
         "definition": {"max-length": 0, "overflow": "reject-publish"}},
    )  # fmt: skip
    wait_for(lambda: management_client.get(f"queues/{vhost}/{dlq}").get("policy"), 20, 0.2)
    collector = Collector()
    bus = EventBus(ops_url, source=unique("failure-watcher"))
    bus.connect()
    bus.subscribe("research.task.#", collector)
    with (
        consuming(bus),
        CeleryWorker(ops_url, [RESEARCH_TASKS], pool="solo", include=[TEST_TASKS]) as worker,
    ):
        # When a task fails there, and its dead-letter copy is nacked
        with app.connection_for_write(ops_url) as connection:
            task_id = tasks_for_tests.plain_fails.apply_async(
                (str(tmp_path / "runs"),), connection=connection
            ).id

        # Then research.task.failed (not dead_lettered) arrives with the task's own error
        collector.wait_for(lambda _: bool(events_of(collector, task_id)), 30)
        [event] = events_of(collector, task_id)
        assert event.event_type == "research.task.failed", worker.output()
        data = event.parse()
        assert isinstance(data, TaskFailed)
        assert data.error.type == "ValueError"
        assert "plain failure on run 1" in data.error.message
