"""Results any process can read: each store, Celery's idiom, TaskQueue, the CLIs, expiry."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from celery import Celery
from celery.beat import PersistentScheduler

from kitty_tasks import TaskFailed, TaskQueue
from kitty_tasks.core.management import ManagementClient
from kitty_tasks.core.topology import BRAIN_COMMANDS, RESEARCH_TASKS
from kitty_tasks.runtime.application import app
from kitty_tasks.runtime.results import wait_for_result
from kitty_tasks.tasks.research import research_paper
from tests.helpers import KITTY_TASKS, ROOT, CeleryWorker
from tests.integration import tasks_for_tests
from tests.integration.result_stores import read_in_another_process
from tests.integration.test_tasks import drain

pytestmark = pytest.mark.rabbitmq

TEST_TASKS = "tests.integration.tasks_for_tests"


def _submit(url: str, signature: Any) -> str:
    """Publish ``signature`` to the broker at ``url``; its task id."""
    with app.connection_for_write(url) as connection:
        return str(signature.apply_async(connection=connection).id)


def _store_app(store: str) -> Celery:
    """An app of the platform's settings reading ``store`` (as another process would)."""
    reader = Celery("reader", task_cls="kitty_tasks.runtime.task:KittyTask")
    reader.config_from_object("celeryconfig")
    reader.conf.result_backend = store
    return reader


def test_results_and_failures_are_read_by_another_process(
    ops_url: str, result_store: str, tmp_path: Path
) -> None:
    # Given a worker storing results in the store, and a success and a failure submitted here
    env = {"KITTY_RESULT_BACKEND": result_store}
    with CeleryWorker(ops_url, [RESEARCH_TASKS], include=[TEST_TASKS], env=env):
        ok = _submit(ops_url, research_paper.s("nozzle clog", max_results=2))
        failed = _submit(ops_url, tasks_for_tests.plain_fails.s(str(tmp_path / "runs.log")))

        # When a fresh process reads both by id, with Celery's idiom and with TaskQueue
        answers = read_in_another_process(ops_url, result_store, ok, failed)

    # Then it gets the return value, and the failure's type, message and attempts
    assert answers[ok]["state"] == "SUCCESS"
    assert answers[ok]["value"]["query"] == "nozzle clog"
    assert answers[ok]["taskqueue"] == answers[ok]["value"]
    assert answers[failed]["state"] == "FAILURE"
    assert answers[failed]["error"] == ["ValueError", "plain failure on run 1"]
    assert answers[failed]["failed"] == ["FAILURE", "ValueError", "plain failure on run 1", 1]


def test_taskqueue_results_and_dead_letters_are_read_from_another_process(
    ops_url: str, tmp_path: Path
) -> None:
    # Given TaskQueue submissions served by a plain worker: a built-in type, and an unknown one
    queue = TaskQueue(ops_url, RESEARCH_TASKS)
    with queue, CeleryWorker(ops_url, [RESEARCH_TASKS]):
        ok = queue.submit("research_paper", {"query": "bed adhesion", "max_results": 1})
        unknown = queue.submit("no_such_type", {"x": 1})

        # When another process asks TaskQueue.result for both
        answers = read_in_another_process(ops_url, os.environ["KITTY_RESULT_BACKEND"], ok, unknown)

    # Then it gets the handler's return value, and a TaskFailed naming the dead-letter reason
    assert answers[ok]["taskqueue"]["query"] == "bed adhesion"
    state, error_type, message, attempts = answers[unknown]["failed"]
    assert (state, error_type, attempts) == ("FAILURE", "Permanent", 1)
    assert "no handler registered for task type 'no_such_type'" in message


def test_result_times_out_with_a_builtin_timeout_error(ops_url: str) -> None:
    # Given a task no worker runs
    with TaskQueue(ops_url, RESEARCH_TASKS) as queue:
        task_id = queue.submit("research_paper", {"query": "q"})

    # Then waiting for it ends in TimeoutError, saying what may be going on
    with pytest.raises(TimeoutError, match=rf"task {task_id} has no result after 0\.2s"):
        TaskQueue(ops_url, RESEARCH_TASKS).result(task_id, timeout=0.2)
    with pytest.raises(TimeoutError, match=r"has no result after 0\.2s"):
        asyncio.run(TaskQueue(ops_url, RESEARCH_TASKS).aresult(task_id, timeout=0.2))


def test_results_are_awaited_without_blocking_the_loop(ops_url: str, tmp_path: Path) -> None:
    queue = TaskQueue(ops_url, RESEARCH_TASKS)

    async def main() -> tuple[Any, Exception, int]:
        ticks = 0

        async def heartbeat() -> None:
            nonlocal ticks
            while True:
                await asyncio.sleep(0.01)
                ticks += 1

        beat = asyncio.create_task(heartbeat())
        ok = queue.submit("research_paper", {"query": "warping"})
        bad = queue.submit("research_paper", {"query": ""})  # invalid input: dead-lettered
        value = await queue.aresult(ok, timeout=60)
        with pytest.raises(TaskFailed) as failed:
            await wait_for_result(app.AsyncResult(bad), timeout=60)
        beat.cancel()
        return value, failed.value, ticks

    # Given a worker, when a coroutine awaits a success and a dead letter
    with queue, CeleryWorker(ops_url, [RESEARCH_TASKS]):
        value, failed, ticks = asyncio.run(main())

    # Then both arrive, and the loop kept running meanwhile
    assert value["query"] == "warping"
    assert isinstance(failed, TaskFailed)
    assert failed.error_type == "InvalidInput"
    assert ticks > 0


def test_cancelling_an_awaited_result_stops_reading_the_store(ops_url: str) -> None:
    # Given a task nobody runs, and a count of the store reads made for it
    with TaskQueue(ops_url, RESEARCH_TASKS) as queue:
        result = app.AsyncResult(queue.submit("research_paper", {"query": "q"}))
    reads = []
    read = result.backend.get_task_meta

    def counted(task_id: str, *args: Any, **kwargs: Any) -> Any:
        reads.append(task_id)
        return read(task_id, *args, **kwargs)

    result.backend.get_task_meta = counted

    async def main() -> set[asyncio.Task[Any]]:
        waiting = asyncio.create_task(wait_for_result(result))
        deadline = asyncio.get_running_loop().time() + 10
        while len(reads) < 3 and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.01)
        # When the awaiting coroutine is cancelled
        waiting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiting
        return asyncio.all_tasks() - {asyncio.current_task()}  # type: ignore[operator]

    try:
        # Then it had polled, and nothing is left scheduled to poll again
        assert asyncio.run(main()) == set()
        assert len(reads) >= 3
        assert reads == [result.id] * len(reads)
    finally:
        del result.backend.get_task_meta


def test_the_cli_prints_results_with_exit_codes(ops_url: str, tmp_path: Path) -> None:
    # Given a success and a failure stored by a worker, and a task that never runs
    with CeleryWorker(ops_url, [RESEARCH_TASKS], include=[TEST_TASKS]):
        ok = _submit(ops_url, research_paper.s("spaghetti", max_results=1))
        failed = _submit(ops_url, tasks_for_tests.plain_fails.s(str(tmp_path / "runs.log")))
        app.AsyncResult(failed).get(timeout=60, propagate=False)
        app.AsyncResult(ok).get(timeout=60)
    with TaskQueue(ops_url, RESEARCH_TASKS) as queue:
        pending = queue.submit("research_paper", {"query": "x"})

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [KITTY_TASKS, "--url", ops_url, "tasks", "result", *args],
            cwd=ROOT, capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip

    # When kitty-tasks reads each of them
    success, failure, waiting = run(ok, "--json"), run(failed), run(pending, "--wait", "0.3")
    # And Celery's own CLI reads the success
    celery = subprocess.run(
        [sys.executable, "-m", "celery", "-A", "kitty_tasks", "result", ok],
        cwd=ROOT, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip

    # Then: 0 and the value; 1 and the error; 3 and a line saying it is still pending
    assert success.returncode == 0, success.stderr
    answer = json.loads(success.stdout)
    assert (answer["task_id"], answer["state"]) == (ok, "SUCCESS")
    assert answer["result"]["query"] == "spaghetti"
    assert failure.returncode == 1
    assert "FAILURE" in failure.stdout
    assert "ValueError: plain failure on run 1" in failure.stdout
    assert waiting.returncode == 3
    assert waiting.stderr.strip() == f"Error: task {pending} is still PENDING after 0.3s"
    assert celery.returncode == 0, celery.stderr
    assert "spaghetti" in celery.stdout


def test_expired_results_are_removed_by_the_cleanup_task(ops_url: str) -> None:
    # Given a stored result older than the expiry, and a fresh one, in the run's store
    backend = app.backend
    old, fresh = "expired-" + os.urandom(4).hex(), "fresh-" + os.urandom(4).hex()
    backend.store_result(old, {"n": 1}, "SUCCESS")
    backend.store_result(fresh, {"n": 2}, "SUCCESS")
    session = backend.ResultSession()
    try:
        row = session.query(backend.task_cls).filter_by(task_id=old).one()
        row.date_done = datetime.now(timezone.utc) - timedelta(seconds=86400 + 60)
        session.commit()
    finally:
        session.close()

    # When a worker runs Celery's cleanup task, as beat sends it
    with CeleryWorker(ops_url, [BRAIN_COMMANDS]):
        cleanup = _submit(ops_url, app.tasks["celery.backend_cleanup"].s())
        app.AsyncResult(cleanup).get(timeout=60)

    # Then the old row is gone and the fresh one is still there (read by a fresh app)
    reader = _store_app(os.environ["KITTY_RESULT_BACKEND"]).backend
    assert reader.get_task_meta(old)["status"] == "PENDING"
    assert reader.get_task_meta(fresh)["result"] == {"n": 2}


def test_beat_schedules_the_cleanup(tmp_path: Path) -> None:
    # Given beat's scheduler on the app, with a schedule file of its own
    scheduler = PersistentScheduler(app=app, schedule_filename=str(tmp_path / "schedule"))
    try:
        entry = scheduler.schedule["celery.backend_cleanup"]
    finally:
        scheduler.close()
    # Then the cleanup runs every hour, on the brain queue that a worker serves
    assert entry.task == "celery.backend_cleanup"
    assert entry.options["queue"] == BRAIN_COMMANDS
    assert entry.schedule.remaining_estimate(datetime.now(timezone.utc)) <= timedelta(hours=1)


def test_no_result_queue_is_left_by_many_submissions(
    ops_url: str, management_client: ManagementClient
) -> None:
    vhost = ops_url.rsplit("/", 1)[1]

    def queues() -> set[str]:
        return {queue["name"] for queue in management_client.queues(vhost)}

    # Given the vhost's queues before
    before = queues()

    # When one process submits 200 tasks with .delay() and 200 with TaskQueue.submit
    with app.connection_for_write(ops_url) as connection:
        for n in range(200):
            research_paper.apply_async((f"query {n}",), connection=connection)
    with TaskQueue(ops_url, RESEARCH_TASKS) as queue:
        for n in range(200):
            queue.submit("research_paper", {"query": f"query {n}"})

    # Then no new queue exists
    assert queues() == before
    drain(ops_url, RESEARCH_TASKS)


def test_sqlite_takes_concurrent_writes_from_prefork_children(ops_url: str, tmp_path: Path) -> None:
    # Given a prefork worker with four children writing to one SQLite file
    store = f"db+sqlite:///{tmp_path}/results.sqlite3"
    env = {"KITTY_RESULT_BACKEND": store}
    with CeleryWorker(ops_url, [RESEARCH_TASKS], concurrency=4, env=env) as worker:
        # When 50 tasks run
        ids = [
            _submit(ops_url, research_paper.s(f"layer shift {n}", max_results=1)) for n in range(50)
        ]
        reader = _store_app(store)
        values = [reader.AsyncResult(task_id).get(timeout=120) for task_id in ids]
        log = worker.output()

    # Then every result is stored, and no writer met "database is locked"
    assert [value["query"] for value in values] == [f"layer shift {n}" for n in range(50)]
    assert "database is locked" not in log


def test_a_store_that_cannot_be_read_is_one_line_and_exit_1(ops_url: str) -> None:
    done = subprocess.run(
        [KITTY_TASKS, "--url", ops_url, "tasks", "result", "some-id"],
        cwd=ROOT, capture_output=True, text=True, timeout=120, check=False,
        env={**os.environ, "KITTY_RESULT_BACKEND": "redis://:secret@127.0.0.1:1/0"},
    )  # fmt: skip
    assert done.returncode == 1
    [line] = done.stderr.splitlines()
    assert line.startswith("Error: cannot read results from redis://:**@127.0.0.1:1/0: ")
    assert "secret" not in line
