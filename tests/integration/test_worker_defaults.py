"""The research worker's defaults (threads, prefetch = threads) still serve priorities first."""

from __future__ import annotations

import os
import re
from contextlib import ExitStack
from pathlib import Path

import pytest

from kitty_tasks.core.topology import RESEARCH_TASKS
from tests.helpers import ROOT, CeleryWorker, queue_counts, wait_for
from tests.integration import tasks_for_tests
from tests.integration.events_helpers import purge

pytestmark = pytest.mark.rabbitmq

TEST_TASKS = "tests.integration.tasks_for_tests"


def research_defaults() -> tuple[str, int]:
    """(pool, concurrency) of the Procfile's research worker: what ``make run`` starts."""
    procfile = (ROOT / "Procfile").read_text()
    found = re.search(
        r"-Q research\.tasks .*--pool (\w+) --concurrency \$\{KITTY_RESEARCH_CONCURRENCY:-(\d+)\}",
        procfile,
    )
    assert found, "the Procfile has no research worker line"
    return found.group(1), int(found.group(2))


def research_processes() -> int:
    """Research worker processes `make run` starts (honcho's ``-c research=N``)."""
    found = re.search(
        r'-c "research=\$\{KITTY_RESEARCH_PROCESSES:-(\d+)\}"',
        (ROOT / "scripts/run.sh").read_text(),
    )
    assert found, "scripts/run.sh does not say how many research workers to start"
    return int(found.group(1))


def lines(path: Path) -> list[str]:
    """The lines recorded so far in ``path``."""
    return path.read_text().split() if path.exists() else []


def release(gate: Path) -> None:
    """Let the ``hold`` task waiting on ``gate`` finish (open the FIFO for writing, close it)."""
    os.close(os.open(gate, os.O_WRONLY))


def test_priorities_are_served_highest_first_at_the_research_defaults(
    amqp_url: str, tmp_path: Path
) -> None:
    # Given the research workers as `make run` starts them (one threads worker per core),
    # every thread of every one of them busy with a held task
    pool, threads = research_defaults()
    processes = research_processes()
    assert processes > 1  # the case this test was extended for: several consumers
    busy = threads * processes
    purge(amqp_url, RESEARCH_TASKS)
    started, order = tmp_path / "started", tmp_path / "order"
    gates = [tmp_path / f"gate-{i}" for i in range(busy)]
    for gate in gates:
        os.mkfifo(gate)
    with ExitStack() as workers:
        for _ in range(processes):
            workers.enter_context(
                CeleryWorker(
                    amqp_url, [RESEARCH_TASKS], pool=pool, concurrency=threads, include=[TEST_TASKS]
                )
            )
        wait_for(
            lambda: queue_counts(amqp_url, RESEARCH_TASKS)[1] == processes,
            30,
            what="every research worker consuming",
        )
        for gate in gates:
            tasks_for_tests.hold.delay(str(started), str(gate))
        wait_for(lambda: len(lines(started)) == busy, 30, what="every thread of every worker busy")

        # When tasks of mixed priority are enqueued while they are busy
        for priority in (0, 9, 3, 7, 5):
            tasks_for_tests.record_order.apply_async((str(order), str(priority)), priority=priority)
        # (none of them waits inside a worker: prefetch = threads, all running)
        assert queue_counts(amqp_url, RESEARCH_TASKS)[0] == 5

        # And one thread is freed (all the others stay busy)
        release(gates[0])
        wait_for(lambda: len(lines(order)) == 5, 30, what="the five tasks to run")
        ran = lines(order)
        for gate in gates[1:]:
            release(gate)

    # Then they ran highest priority first
    assert ran == ["9", "7", "5", "3", "0"]
