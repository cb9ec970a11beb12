"""The metrics endpoints, scraped: the broker exporter and a prefork worker's task metrics."""

from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from kombu import Connection

from kitty_tasks.runtime.application import app
from tests.conftest import MANAGEMENT_URL
from tests.helpers import KITTY_TASKS, ROOT, CeleryWorker, wait_for
from tests.integration.ops_support import free_port, sample, scrape
from tests.integration.ops_tasks import FAULT_FILE_ENV, fragile, needs_key

pytestmark = [pytest.mark.rabbitmq]


@pytest.fixture
def exporter(ops_url: str) -> Iterator[int]:
    """``kitty-tasks metrics serve`` as a subprocess on a free port; yields the port."""
    port = free_port()
    process = subprocess.Popen(
        [KITTY_TASKS, "metrics", "serve", "--port", str(port),
         "--addr", "127.0.0.1"],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        env={**os.environ, "RABBITMQ_URL": ops_url, "KITTY_MANAGEMENT_URL": MANAGEMENT_URL},
    )  # fmt: skip
    try:
        wait_for(lambda: _answers(port), 20, 0.2, what="the exporter to listen")
        yield port
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(10)


def _answers(port: int) -> bool:
    try:
        scrape(port)
    except OSError:
        return False
    return True


def _gauge(port: int, name: str, queue: str) -> float | None:
    return sample(scrape(port), name, queue=queue)


@pytest.mark.slow
def test_exporter_shows_queue_and_dlq_gauges_that_follow_the_broker(
    ops_url: str, exporter: int
) -> None:
    # Given an idle vhost, the gauges read zero
    samples = scrape(exporter)
    assert sample(samples, "kitty_exporter_broker_up") == 1.0
    assert sample(samples, "kitty_queue_depth", queue="research.tasks") == 0.0
    assert sample(samples, "kitty_queue_consumers", queue="research.tasks") == 0.0
    assert sample(samples, "kitty_dlq_depth", queue="research.tasks.dlq") == 0.0

    # When three tasks wait in cad.tasks and one message expires into research.tasks.dlq
    with Connection(ops_url) as connection:
        producer = connection.Producer()
        for _ in range(3):
            producer.publish({"n": 1}, exchange="", routing_key="cad.tasks")
        producer.publish({"n": 2}, exchange="", routing_key="research.tasks", expiration=0.001)

    # Then the next scrapes show them (the management API's depths lag a few seconds)
    wait_for(
        lambda: _gauge(exporter, "kitty_queue_depth", "cad.tasks") == 3.0, 20, 0.5,
        what="kitty_queue_depth{queue=cad.tasks} == 3",
    )  # fmt: skip
    assert _gauge(exporter, "kitty_dlq_depth", "research.tasks.dlq") == 1.0
    wait_for(
        lambda: (_gauge(exporter, "kitty_dlq_oldest_age_seconds", "research.tasks.dlq") or 0) >= 1,
        10, 0.5, what="the dead letter to age",
    )  # fmt: skip
    # And a scrape only peeks: the dead letter is still there
    assert _gauge(exporter, "kitty_dlq_depth", "research.tasks.dlq") == 1.0


@pytest.mark.slow
def test_prefork_worker_exposes_task_outcomes_run_time_and_queue_wait(
    ops_url: str, tmp_path: Path
) -> None:
    # Given a prefork worker with two children, in multiprocess mode, serving its metrics
    port = free_port()
    multiproc = tmp_path / "prom"
    multiproc.mkdir()
    fault = tmp_path / "fault"
    env = {
        "KITTY_METRICS_PORT": str(port),
        "PROMETHEUS_MULTIPROC_DIR": str(multiproc),
        FAULT_FILE_ENV: str(fault),
    }
    labels = {"task": "research.fragile", "queue": "research.tasks"}
    with CeleryWorker(
        ops_url, ["research.tasks"], concurrency=2, include=["tests.integration.ops_tasks"], env=env
    ) as worker:
        wait_for(lambda: _answers(port), 20, 0.2, what="the worker's metrics endpoint")
        assert sample(scrape(port), "kitty_tasks_total", outcome="succeeded", **labels) is None

        # When four tasks succeed, one fails for good, and one fails twice (retry, then DLQ)
        with app.connection_for_write(ops_url) as connection:
            for item in range(4):
                fragile.apply_async((item,), connection=connection)
            needs_key.apply_async(({},), connection=connection)
        wait_for(
            lambda: sample(scrape(port), "kitty_tasks_total", outcome="succeeded", **labels) == 4,
            30, 0.25, what=f"4 successes\n{worker.output()}",
        )  # fmt: skip
        fault.touch()
        with app.connection_for_write(ops_url) as connection:
            fragile.apply_async((99,), connection=connection)
        wait_for(
            lambda: sample(scrape(port), "kitty_tasks_total", outcome="dead_lettered", **labels)
            == 1,
            30, 0.25, what="the fragile task dead-lettered",
        )  # fmt: skip

        # Then the worker's endpoint shows every outcome, summed over its children
        samples = scrape(port)
        assert sample(samples, "kitty_tasks_total", outcome="retried", **labels) == 1
        assert sample(samples, "kitty_tasks_total", outcome="failed", **labels) is None
        poison = {"task": "research.needs_key", "queue": "research.tasks"}
        assert sample(samples, "kitty_tasks_total", outcome="dead_lettered", **poison) == 1
        # And run time for every run (4 ok + 2 failed), queue wait for first attempts only (5)
        assert sample(samples, "kitty_task_runtime_seconds_count", **labels) == 6
        assert sample(samples, "kitty_task_queue_wait_seconds_count", **labels) == 5
        wait_sum = sample(samples, "kitty_task_queue_wait_seconds_sum", **labels)
        assert wait_sum is not None
        assert 0 <= wait_sum < 30
        assert list(multiproc.glob("*.db")), "the children wrote no multiprocess files"
