"""Idempotent handlers on the real broker: duplicates in one process and across a restart."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from events import Event, EventBus, MemoryStore, idempotent
from tests.helpers import ROOT
from tests.integration.events_helpers import Collector, consuming, unique

pytestmark = pytest.mark.rabbitmq


def test_an_event_delivered_twice_is_handled_once(amqp_url: str) -> None:
    # Given an idempotent handler behind a counter of deliveries
    deliveries, runs = Collector(), Collector()
    store = MemoryStore()
    handle = idempotent(runs, store=store)

    def handler(event: Event) -> None:
        deliveries(event)
        handle(event)

    bus = EventBus(amqp_url, source=unique("idem-service"))
    bus.connect()
    bus.subscribe("fabrication.print.started", handler)
    # When the same event (same event_id) is published twice, then another one
    event = Event(event_type="fabrication.print.started", data={"job_id": "j"})
    with consuming(bus), EventBus(amqp_url, source="fabrication-service") as publisher:
        publisher.publish_many([event, event])
        other = publisher.publish("fabrication.print.started", {"job_id": "k"})
        deliveries.wait_for(lambda events: len(events) == 3)
    # Then both copies were delivered but the handler ran once for it
    assert deliveries.ids == [event.event_id, event.event_id, other.event_id]
    assert runs.ids == [event.event_id, other.event_id]


def test_a_failed_attempt_is_not_remembered_so_the_retry_runs(amqp_url: str) -> None:
    runs = Collector(fail_times=1)
    bus = EventBus(amqp_url, source=unique("idem-retry"), retry_backoff_base=0.1)
    bus.connect()
    bus.subscribe("fabrication.print.started", idempotent(runs, store=MemoryStore()))
    with consuming(bus), EventBus(amqp_url, source="fabrication-service") as publisher:
        event = publisher.publish("fabrication.print.started", {"job_id": "j"})
        runs.wait_for(lambda events: len(events) == 2)
    assert runs.ids == [event.event_id, event.event_id]


def run_consumer(url: str, source: str, db: Path, output: Path, deliveries: int) -> None:
    subprocess.run(
        [sys.executable, "-m", "tests.integration.events_idempotent_consumer",
         url, source, str(db), str(output), str(deliveries)],
        cwd=ROOT, check=True, timeout=60,
    )  # fmt: skip


@pytest.mark.slow
def test_the_handler_runs_once_also_after_the_process_restarts(
    amqp_url: str, tmp_path: Path
) -> None:
    # Given a consumer process with a SQLite store that handled an event and exited
    source, db, output = unique("restart-service"), tmp_path / "idem.sqlite3", tmp_path / "ran"
    event = Event(event_type="fabrication.print.started", data={"job_id": "j"})
    with EventBus(amqp_url, source="fabrication-service") as publisher:
        bus = EventBus(amqp_url, source=source)
        with bus:
            bus.subscribe("fabrication.print.started", print)  # declare the queue up front
        publisher.publish_many([event])
        run_consumer(amqp_url, source, db, output, 1)
        assert output.read_text().split() == [event.event_id]
        # When the same event is delivered again to a new process, followed by a new one
        fresh = publisher.publish("fabrication.print.started", {"job_id": "k"})
        publisher.publish_many([event])
        run_consumer(amqp_url, source, db, output, 2)
    # Then the new process skipped the duplicate and ran only for the new event
    assert output.read_text().split() == [event.event_id, fresh.event_id]
