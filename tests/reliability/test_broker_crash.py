"""Scenario 1: the broker is SIGKILLed mid-stream and restarted; nothing confirmed is lost."""

from __future__ import annotations

import threading
import time
import uuid
from collections import Counter
from pathlib import Path

from events import Event, EventBus
from kitty_tasks.core.topology import RESEARCH_TASKS, dlq_name
from tests.reliability.helpers import Ledger, WorkerProcess, queue_counts, read_ids
from tests.reliability.node import RabbitNode, wait_for
from tests.reliability.workerapp import RECORD_TASK, make_app

EVENTS = 5_000
TASKS = 2_000
EVENT_BATCH = 25
#: Kill once this share of the tasks is confirmed: both streams are mid-flight then.
KILL_AT = 0.3
#: Pause between a publisher's retries after an error: a backoff, not a synchronisation.
RETRY_BACKOFF = 0.5


def publish_tasks(url: str, ledger: Ledger, stop: threading.Event) -> None:
    """Publish TASKS record tasks; an id counts as confirmed only when apply_async returned."""
    app = make_app(url)
    task = app.tasks[RECORD_TASK]
    for n in range(TASKS):
        task_id = f"t-{n}-{uuid.uuid4().hex[:6]}"
        ledger.sent.add(task_id)
        while not stop.is_set():
            try:
                task.apply_async(args=(n,), task_id=task_id)
            except Exception:
                # Mid-publish when the broker died: raised, never reported success. Retry.
                ledger.failed_attempts += 1
                time.sleep(RETRY_BACKOFF)
            else:
                ledger.confirmed.add(task_id)
                break
    app.close()


def publish_events(bus: EventBus, ledger: Ledger, tasks: Ledger, stop: threading.Event) -> None:
    """Publish EVENTS events in confirmed batches, paced to stay level with the task stream."""
    for start in range(0, EVENTS, EVENT_BATCH):
        wait_for(
            lambda start=start: stop.is_set() or len(tasks.confirmed) * EVENTS / TASKS >= start,
            timeout=120,
            interval=0.01,
            what="task stream to keep pace",
        )
        batch = [
            bus.event("reliability.crash.tick", {"n": n}, event_id=str(uuid.uuid4()))
            for n in range(start, min(start + EVENT_BATCH, EVENTS))
        ]
        ledger.sent.update(e.event_id for e in batch)
        while not stop.is_set():
            try:
                bus.publish_many(batch)
            except Exception:
                ledger.failed_attempts += 1
                time.sleep(RETRY_BACKOFF)
            else:
                ledger.confirmed.update(e.event_id for e in batch)
                break


def test_sigkilled_broker_loses_no_confirmed_event_or_task(
    rabbit_node: RabbitNode, node_url: str, tmp_path: Path
) -> None:
    """Guarantee: every confirmed message is delivered after a SIGKILL; consumers resume alone."""
    # Given a worker on research.tasks and an EventBus subscriber on reliability.#
    worker = WorkerProcess(node_url, tmp_path / "worker", concurrency=8).start()
    received: Counter[str] = Counter()
    lock = threading.Lock()

    def on_event(event: Event) -> None:
        with lock:
            received[event.event_id] += 1

    consumer = EventBus(node_url, source="reliability").connect()
    consumer.subscribe("reliability.#", on_event, queue="reliability.crash.events")
    consumer.start_consuming(block=False)
    assert consumer.wait_until_consuming(30)
    publisher = EventBus(node_url, source="reliability").connect()
    tasks, events = Ledger(), Ledger()
    stop = threading.Event()
    threads = [
        threading.Thread(target=publish_tasks, args=(node_url, tasks, stop)),
        threading.Thread(target=publish_events, args=(publisher, events, tasks, stop)),
    ]
    try:
        for thread in threads:
            thread.start()
        # When the broker is SIGKILLed with both streams mid-flight, and restarted
        wait_for(lambda: len(tasks.confirmed) >= TASKS * KILL_AT, timeout=120, what="30% of tasks")
        in_flight = (len(tasks.confirmed), len(events.confirmed))
        rabbit_node.kill()
        down_at = time.monotonic()
        rabbit_node.start()
        restart_seconds = time.monotonic() - down_at
        for thread in threads:
            thread.join(timeout=300)
        # Then every confirmed id arrives, the consumers having reconnected by themselves
        try:
            # Celery's worker reconnects with Kombu's backoff (up to 30 s between tries),
            # so a window without progress shorter than that would fail a healthy run.
            wait_for(
                lambda: not (tasks.confirmed - set(read_ids(worker.record_dir, "runs"))),
                timeout=120,
                what="every confirmed task run",
                progress=lambda: len(read_ids(worker.record_dir, "runs")),
            )
        except TimeoutError as err:
            missing = sorted(tasks.confirmed - set(read_ids(worker.record_dir, "runs")))
            raise AssertionError(
                f"{err}; {len(missing)} confirmed task(s) never ran, e.g. {missing[:5]}; "
                f"queue (ready, consumers) = {queue_counts(node_url, RESEARCH_TASKS)}; "
                f"its DLQ = {queue_counts(node_url, dlq_name(RESEARCH_TASKS))}; "
                f"worker alive: {worker.alive}\n{worker.log_tail()}"
            ) from err
        wait_for(
            lambda: not (events.confirmed - set(received)),
            timeout=120,
            what="every confirmed event",
            progress=lambda: len(received),
        )
        worker_survived = worker.alive
        consumer_threads_alive = consumer.wait_until_consuming(30)
    finally:
        stop.set()
        consumer.stop()
        consumer.disconnect()
        publisher.disconnect()
        worker.stop()
    tasks.received = read_ids(worker.record_dir, "runs")
    events.received = received
    print(f"killed at tasks/events confirmed {in_flight}, restart {restart_seconds:.1f}s")
    print(f"tasks: {tasks.summary()}")
    print(f"events: {events.summary()}")
    assert in_flight[0] < TASKS, "the kill must hit the task stream mid-flight"
    assert in_flight[1] < EVENTS, "the kill must hit the event stream mid-flight"
    assert len(tasks.confirmed) == TASKS
    assert len(events.confirmed) == EVENTS
    assert tasks.lost == set()
    assert events.lost == set()
    # The idempotent side effect ran once per task even where the task ran twice.
    effects = read_ids(worker.record_dir, "effects")
    assert set(effects) == tasks.confirmed
    assert max(effects.values()) == 1
    assert worker_survived, "the worker must survive the broker crash"
    assert consumer_threads_alive, "the EventBus consumer must be consuming again"
