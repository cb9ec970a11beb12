"""Scenario 7: poison messages end in the DLQ with a reason (or are refused at publish)."""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

import amqp
import pytest
from kombu import Connection
from pydantic import BaseModel

from events import EventBus
from events.schemas import SchemaRegistry
from kitty_tasks import TaskQueue
from kitty_tasks.core.errors import PayloadTooLarge
from kitty_tasks.core.topology import EVENTS_EXCHANGE, RESEARCH_TASKS, TASKS_EXCHANGE, dlq_name
from tests.reliability.helpers import WorkerProcess, queue_counts, read_ids
from tests.reliability.node import wait_for
from tests.reliability.workerapp import RECORD_TASK, VALIDATED_TASK, make_app

NESTED = "[" * 10_000 + "]" * 10_000
TWO_MIB = 2 * 1024 * 1024


def celery_headers(task: str, task_id: str) -> dict[str, Any]:
    """Protocol-2 headers Celery needs to route a raw message to ``task``."""
    return {"lang": "py", "task": task, "id": task_id, "root_id": task_id, "retries": 0}


#: (id, body, content type, task name): each must be dead-lettered, not run, not looped.
TASK_POISONS: list[tuple[str, bytes, str, str]] = [
    ("not-json", b"{this is not json", "application/json", RECORD_TASK),
    (
        "pickle",
        b"\x80\x04\x95\x05\x00\x00\x00\x00\x00\x00\x00N.",
        "application/x-python-serialize",
        RECORD_TASK,
    ),
    ("bad-shape", json.dumps({"not": "a task body"}).encode(), "application/json", RECORD_TASK),
    (
        "wrong-schema",
        json.dumps([[], {"query": ""}, {}]).encode(),
        "application/json",
        VALIDATED_TASK,
    ),
    ("nan", b'[[], {"query": NaN}, {}]', "application/json", VALIDATED_TASK),
    ("unknown-task", json.dumps([[1], {}, {}]).encode(), "application/json", "no.such.task"),
    ("nested", NESTED.encode(), "application/json", RECORD_TASK),
    # Well-formed but over KITTY_MAX_MESSAGE_BYTES: dead-lettered before it is decoded.
    ("two-mib", json.dumps([["a" * TWO_MIB], {}, {}]).encode(), "application/json", RECORD_TASK),
]


def dead_letters(url: str, queue: str) -> dict[str, dict[str, Any]]:
    """Every message in ``queue`` by message id (or task id), with its headers."""
    found: dict[str, dict[str, Any]] = {}
    with Connection(url) as conn:
        channel = conn.channel()
        while (message := channel.basic_get(queue, no_ack=True)) is not None:
            headers = dict(message.properties.get("application_headers") or {})
            key = message.properties.get("message_id") or headers.get("id")
            found[str(key)] = headers
        channel.close()
    return found


def test_task_poison_messages_are_dead_lettered_and_the_worker_lives(
    node_url: str, tmp_path: Path
) -> None:
    """Guarantee: undecodable/unknown/invalid tasks go to the DLQ with a reason, once each."""
    # Given a worker on research.tasks
    worker = WorkerProcess(node_url, tmp_path / "worker").start()
    # When each poison is published raw, followed by one good task
    with Connection(node_url) as conn:
        channel = conn.channel()
        for poison_id, body, content_type, task in TASK_POISONS:
            channel.basic_publish(
                amqp.Message(
                    body,
                    content_type=content_type,
                    content_encoding="utf-8",
                    message_id=poison_id,
                    application_headers=celery_headers(task, poison_id),
                    delivery_mode=2,
                ),
                TASKS_EXCHANGE,
                RESEARCH_TASKS,
            )
        channel.close()
    app = make_app(node_url)
    # A 2 MiB task is refused at publish, by the Celery idiom and by the TaskQueue facade
    with pytest.raises(PayloadTooLarge, match="KITTY_MAX_MESSAGE_BYTES"):
        app.tasks[RECORD_TASK].apply_async(args=("a" * TWO_MIB,), task_id="two-mib")
    with TaskQueue(node_url, RESEARCH_TASKS) as facade, pytest.raises(PayloadTooLarge):
        facade.submit("research_paper", {"query": "a" * TWO_MIB})
    app.tasks[RECORD_TASK].apply_async(args=(1,), task_id="good-after-poison")
    # Then the good task runs and every poison sits in the DLQ exactly once, with a reason
    wait_for(
        lambda: read_ids(worker.record_dir, "runs")["good-after-poison"] == 1,
        timeout=60,
        what="the good task",
    )
    wait_for(
        lambda: queue_counts(node_url, dlq_name(RESEARCH_TASKS))[0] >= len(TASK_POISONS),
        timeout=60,
        what="every poison dead-lettered",
    )
    assert queue_counts(node_url, RESEARCH_TASKS)[0] == 0, "nothing loops back"
    dead = dead_letters(node_url, dlq_name(RESEARCH_TASKS))
    alive = worker.alive
    worker.stop()
    app.close()
    reasons = {
        k: (h.get("x-kitty-error-type") or h["x-death"][0]["reason"]) for k, h in dead.items()
    }
    print(f"task poisons: sent={len(TASK_POISONS)} dead-lettered={len(dead)} reasons={reasons}")
    assert set(dead) == {p[0] for p in TASK_POISONS}
    assert reasons["two-mib"] == "MessageTooLarge"
    assert "over the 1,048,576-byte limit" in dead["two-mib"]["x-kitty-error-message"]
    assert set(read_ids(worker.record_dir, "runs")) == {"good-after-poison"}
    assert alive


class Tick(BaseModel):
    """The schema of ``reliability.poison.tick`` v2: the only version this consumer reads."""

    n: int


def test_event_poison_messages_are_dead_lettered_and_oversized_is_refused(node_url: str) -> None:
    """Guarantee: bad events go to the DLQ once each; a 2 MiB event is refused at both ends."""
    # Given an EventBus subscriber whose registry knows reliability.poison.tick v2 only
    registry = SchemaRegistry()
    registry.register("reliability.poison.tick", Tick, version=2)
    handled: list[str] = []
    queue = "reliability.poison.events"
    with EventBus(node_url, source="reliability", registry=registry) as bus:
        bus.subscribe("reliability.poison.#", lambda e: handled.append(e.event_id), queue=queue)
        good = bus.event("reliability.poison.tick", {"n": 1})
        valid = json.loads(good.encode())
        big = {**valid, "event_id": str(uuid.uuid4()), "data": {"n": 2, "x": "a" * TWO_MIB}}

        def envelope(**changes: Any) -> bytes:
            return json.dumps({**valid, "event_id": str(uuid.uuid4()), **changes}).encode()

        poisons = {
            "not-json": (b"{nope", "application/json"),
            "pickle": (b"\x80\x04N.", "application/x-python-serialize"),
            "wrong-schema": (envelope(data={"n": "not a number"}), "application/json"),
            "bad-envelope": (json.dumps({"event_type": 5}).encode(), "application/json"),
            "unknown-old-version": (envelope(version=1), "application/json"),
            "unreadable-new-version": (envelope(version=999, data={}), "application/json"),
            "nan": (envelope(data={"n": float("nan")}), "application/json"),
            "nested": (NESTED.encode(), "application/json"),
        }
        # When a 2 MiB event is published through the bus, Then it is refused before sending
        with pytest.raises(PayloadTooLarge):
            bus.publish("reliability.poison.tick", {"n": 3, "x": "a" * TWO_MIB})
        # When the poisons, a raw 2 MiB event that bypasses the bus, and a good event are sent
        with Connection(node_url) as conn:
            channel = conn.channel()
            for poison_id, (body, content_type) in poisons.items():
                channel.basic_publish(
                    amqp.Message(
                        body, content_type=content_type, message_id=poison_id, delivery_mode=2
                    ),
                    EVENTS_EXCHANGE,
                    "reliability.poison.tick",
                )
            channel.basic_publish(
                amqp.Message(
                    json.dumps(big).encode(), content_type="application/json", message_id="two-mib"
                ),
                EVENTS_EXCHANGE,
                "reliability.poison.tick",
            )
            channel.close()
        bus.publish_many([good])
        bus.start_consuming(block=False)
        # Then the good event is handled; every poison and the raw big event are in the DLQ once
        wait_for(lambda: good.event_id in handled, timeout=60, what="the good event")
        wait_for(
            lambda: queue_counts(node_url, dlq_name(queue))[0] >= len(poisons) + 1,
            timeout=60,
            what="every poison dead-lettered",
        )
        alive = bus.wait_until_consuming(5)
        bus.stop()
    assert queue_counts(node_url, queue)[0] == 0
    dead = dead_letters(node_url, dlq_name(queue))
    reasons = {k: h.get("x-kitty-error-message", "")[:60] for k, h in dead.items()}
    print(
        f"event poisons: sent={len(poisons)} dead-lettered={len(dead)} handled={len(handled)} "
        f"reasons={reasons}"
    )
    assert set(dead) == {*poisons, "two-mib"}
    assert all(reasons.values())
    assert reasons["two-mib"].startswith("message body is 2,097,")
    assert handled == [good.event_id]
    assert alive
