"""Scenario 5: a node with consumer_timeout = 60 s; long waits live in the ladder, not a worker."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
from kombu import Connection, Consumer, Queue

from kitty_tasks.core.topology import RESEARCH_TASKS
from tests.reliability.helpers import WorkerProcess, read_ids
from tests.reliability.node import RabbitNode, wait_for
from tests.reliability.workerapp import FLAKY_TASK, make_app

CONSUMER_TIMEOUT_MS = 60_000
NODE_CONFIG = {"consumer_timeout": str(CONSUMER_TIMEOUT_MS)}
WORKER_ENV = {"KITTY_BROKER_CONSUMER_TIMEOUT": str(CONSUMER_TIMEOUT_MS)}


def test_worker_refuses_a_time_limit_above_consumer_timeout(node_url: str, tmp_path: Path) -> None:
    """Guarantee: a task time limit >= consumer_timeout is refused at worker start, clearly."""
    # Given a worker configured with a 120 s task time limit against a 60 s consumer_timeout
    worker = WorkerProcess(
        node_url, tmp_path, env={**WORKER_ENV, "KITTY_TASK_TIME_LIMIT": "120"}
    ).start(wait=False)
    # When it starts, Then it exits non-zero before consuming, saying why
    assert worker.process is not None
    returncode = worker.process.wait(timeout=60)
    log = worker.log_path.read_text()
    assert returncode != 0
    assert "ConfigurationError" in log
    assert "120s" in log
    assert "60000 ms" in log
    # And a limit under the timeout starts normally
    ok = WorkerProcess(node_url, tmp_path / "ok", env={**WORKER_ENV, "KITTY_TASK_TIME_LIMIT": "30"})
    ok.start()
    ok.stop()


@pytest.mark.timeout(420)
def test_retry_waiting_past_consumer_timeout_causes_no_channel_error(
    rabbit_node: RabbitNode, node_url: str, tmp_path: Path
) -> None:
    """Guarantee: a retry waiting over consumer_timeout in the ladder breaks no channel."""
    # Given a worker whose first retry waits in the 2-minute bucket (60-120 s with jitter)
    worker = WorkerProcess(
        node_url,
        tmp_path / "worker",
        env={**WORKER_ENV, "KITTY_RETRY_BACKOFF_BASE": "120", "KITTY_TASK_TIME_LIMIT": "30"},
    ).start()
    # and, as a control, a plain consumer that holds one message unacked
    control_url = node_url
    timed_out = threading.Event()
    control_error: list[BaseException] = []

    def hold_unacked() -> None:
        with Connection(control_url) as conn:
            queue = Queue("reliability.control", durable=False, auto_delete=True)
            held: list[object] = []
            with Consumer(conn, [queue], callbacks=[lambda _b, m: held.append(m)]) as consumer:
                consumer.qos(prefetch_count=1)
                conn.Producer().publish("held", routing_key=queue.name)
                deadline = time.monotonic() + 200
                while time.monotonic() < deadline:
                    try:
                        conn.drain_events(timeout=1)
                    except TimeoutError:
                        continue
                    except Exception as err:  # the broker closes the channel: that is the point
                        control_error.append(err)
                        if "PRECONDITION_FAILED - delivery acknowledgement" in str(err):
                            timed_out.set()
                        return

    control = threading.Thread(target=hold_unacked, daemon=True)
    control.start()
    app = make_app(node_url)
    # When a task fails once and its retry waits longer than consumer_timeout
    app.tasks[FLAKY_TASK].apply_async(args=(1,), task_id="flaky-1", queue=RESEARCH_TASKS)
    wait_for(
        lambda: read_ids(worker.record_dir, "effects")["flaky-1"] == 1,
        timeout=200,
        interval=1,
        what="the retried task to succeed",
    )
    # Then it ran twice, the second run more than consumer_timeout after the first
    runs = [
        float(line.split()[3]) for line in (worker.record_dir / "runs.log").read_text().splitlines()
    ]
    waited = runs[1] - runs[0]
    assert len(runs) == 2
    assert waited > CONSUMER_TIMEOUT_MS / 1000
    # and the control consumer did get its channel closed (the timeout is live on this node)
    assert timed_out.wait(timeout=130), f"consumer_timeout never fired: {control_error}"
    # and the worker never saw a channel error, and is still up
    log = worker.log_path.read_text()
    worker_alive = worker.alive
    worker.stop()
    app.close()
    print(f"retry waited {waited:.1f}s in the ladder; control consumer timed out; worker ok")
    assert "PRECONDITION_FAILED" not in log
    assert "delivery acknowledgement" not in log
    assert worker_alive
