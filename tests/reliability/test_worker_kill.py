"""Scenario 3: a worker, or one pool child, SIGKILLed mid-task; the task is redelivered."""

from __future__ import annotations

import os
import signal
from pathlib import Path

from kitty_tasks.core.topology import RESEARCH_TASKS
from tests.reliability.helpers import WorkerProcess, queue_counts, read_ids
from tests.reliability.node import wait_for
from tests.reliability.workerapp import RECORD_TASK, make_app

TASKS = 20
#: Long enough that SIGKILL lands while tasks run.
TASK_SECONDS = 3.0


def test_sigkilled_worker_task_is_redelivered_and_side_effect_stays_single(
    node_url: str, tmp_path: Path
) -> None:
    """Guarantee: tasks of a SIGKILLed worker are redelivered; the idempotent effect is single."""
    # Given a prefork worker running 3-second tasks
    records = tmp_path / "records"
    first = WorkerProcess(node_url, records, pool="prefork", concurrency=2).start()
    app = make_app(node_url)
    ids = [f"kill-{n}" for n in range(TASKS)]
    for n, task_id in enumerate(ids):
        app.tasks[RECORD_TASK].apply_async(args=(n, TASK_SECONDS), task_id=task_id)
    # When the whole worker is SIGKILLed while two tasks are mid-run
    wait_for(lambda: len(read_ids(records, "runs")) >= 2, timeout=60, what="tasks running")
    first.kill(signal.SIGKILL)
    # Read after the kill: a task that finished just before it was not interrupted.
    interrupted = set(read_ids(records, "runs")) - set(read_ids(records, "effects"))
    # The broker has closed the dead worker's connection (its consumer is gone), so the
    # new worker's start waits for its own consumer, not the dead one's.
    wait_for(
        lambda: queue_counts(node_url, RESEARCH_TASKS)[1] == 0,
        timeout=60,
        what="the killed worker's consumer gone",
    )
    # Then a new worker gets the interrupted tasks again and every task completes
    second = WorkerProcess(node_url, records, pool="prefork", concurrency=4).start()
    wait_for(
        lambda: _all_done(second, records, ids),
        timeout=60,
        interval=0.5,
        what="every task's effect",
        progress=lambda: sum(read_ids(records, "runs").values()),
    )
    second.stop()
    app.close()
    runs, effects = read_ids(records, "runs"), read_ids(records, "effects")
    redelivered = {i for i, n in runs.items() if n > 1}
    print(
        f"worker SIGKILL: sent={TASKS} interrupted={len(interrupted)} runs={sum(runs.values())} "
        f"redelivered={len(redelivered)} effects={sum(effects.values())}"
    )
    assert interrupted
    assert interrupted <= redelivered
    assert max(effects.values()) == 1


def test_sigkilled_pool_child_task_is_redelivered_and_worker_goes_on(
    node_url: str, tmp_path: Path
) -> None:
    """Guarantee: a pool child killed alone gets its task redelivered (reject_on_worker_lost)."""
    # Given a prefork worker running one long task
    records = tmp_path / "records"
    worker = WorkerProcess(node_url, records, pool="prefork", concurrency=2).start()
    app = make_app(node_url)
    app.tasks[RECORD_TASK].apply_async(args=(0, TASK_SECONDS), task_id="child-0")
    wait_for(lambda: read_ids(records, "runs")["child-0"] == 1, timeout=60, what="task running")
    child_pid = int((records / "runs.log").read_text().split()[2])
    # When only the pool child running it is SIGKILLed
    assert child_pid in worker.children()
    os.kill(child_pid, signal.SIGKILL)
    # Then the main worker lives on, the task runs again and completes once
    wait_for(
        lambda: _all_done(worker, records, ["child-0"]),
        timeout=90,
        interval=0.5,
        what="the task's effect",
    )
    runs = read_ids(records, "runs")
    alive = worker.alive
    worker.stop()
    app.close()
    print(f"pool child SIGKILL: runs={runs['child-0']} effects=1 worker alive={alive}")
    assert runs["child-0"] == 2
    assert alive


def _all_done(worker: WorkerProcess, records: Path, ids: list[str]) -> bool:
    """True once every id has its effect; a dead worker's log becomes the wait's last error."""
    if not worker.alive:
        raise AssertionError(f"the worker exited:\n{worker.log_tail()}")
    return set(read_ids(records, "effects")) >= set(ids)
