"""Scenario 4: full queues: reject-publish refuses the publisher, drop-head dead-letters."""

from __future__ import annotations

import pytest
from kombu import Connection

from kitty_tasks.core.declarer import apply_topology
from kitty_tasks.core.errors import PublishRejected
from kitty_tasks.core.publisher import ConfirmedPublisher, OutgoingMessage
from kitty_tasks.core.topology import (
    CAD_TASKS,
    DLX_EXCHANGE,
    TASKS_EXCHANGE,
    TOPOLOGY,
    Binding,
    QueueSpec,
    Topology,
    dead_letter_arguments,
    dlq_name,
)
from tests.reliability.helpers import queue_counts
from tests.reliability.node import wait_for
from tests.reliability.workerapp import RECORD_TASK, make_app

CAD_LIMIT = TOPOLOGY.queue(CAD_TASKS).arguments["x-max-length"]
BATCH = 500


def drain_ids(url: str, queue: str) -> list[str]:
    """Get every message of ``queue`` (acking it); return their message ids in order."""
    ids: list[str] = []
    with Connection(url) as conn:
        channel = conn.channel()
        while (message := channel.basic_get(queue, no_ack=True)) is not None:
            ids.append(str(message.properties.get("message_id")))
        channel.close()
    return ids


def test_reject_publish_refuses_the_publisher_and_keeps_what_is_queued(node_url: str) -> None:
    """Guarantee: a full reject-publish queue raises PublishRejected; nothing queued is lost."""
    # Given cad.tasks filled to its max-length with confirmed messages
    sent = [f"fill-{n}" for n in range(CAD_LIMIT)]
    with Connection(node_url) as conn:
        publisher = ConfirmedPublisher(conn)
        for start in range(0, CAD_LIMIT, BATCH):
            publisher.publish_batch(
                [
                    OutgoingMessage(b"{}", TASKS_EXCHANGE, CAD_TASKS, {"message_id": i})
                    for i in sent[start : start + BATCH]
                ]
            )
        # When one more message is published, raw and as a Celery task
        with pytest.raises(PublishRejected, match="full"):
            publisher.publish(
                OutgoingMessage(b"{}", TASKS_EXCHANGE, CAD_TASKS, {"message_id": "x"})
            )
    app = make_app(node_url)
    with pytest.raises(PublishRejected, match=CAD_TASKS):
        app.tasks[RECORD_TASK].apply_async(args=(1,), task_id="over", queue=CAD_TASKS)
    app.close()
    # Then the queue holds exactly the confirmed messages, every one of them
    assert queue_counts(node_url, CAD_TASKS)[0] == CAD_LIMIT
    received = drain_ids(node_url, CAD_TASKS)
    print(f"reject-publish: confirmed={len(sent)} rejected=2 received={len(received)}")
    assert received == sent


def test_drop_head_dead_letters_the_dropped_message_with_maxlen(node_url: str) -> None:
    """Guarantee: with drop-head the oldest message goes to the DLQ, x-death reason maxlen."""
    # Given a drop-head queue of length 3 wired to its DLQ like every platform queue
    name = "reliability.drophead"
    spec = QueueSpec(
        name,
        {"x-max-length": 3, "x-overflow": "drop-head", **dead_letter_arguments(name)},
        (Binding(TASKS_EXCHANGE, name),),
    )
    dead = QueueSpec(dlq_name(name), {}, (Binding(DLX_EXCHANGE, name),))
    sent = [f"m-{n}" for n in range(5)]
    with Connection(node_url) as conn:
        apply_topology(conn, Topology((), (spec, dead)))
        # When five messages are published
        ConfirmedPublisher(conn).publish_batch(
            [OutgoingMessage(b"{}", TASKS_EXCHANGE, name, {"message_id": i}) for i in sent]
        )
        # Then the two oldest are in the DLQ with x-death reason maxlen, the newest three stay
        # (dead-lettering happens after the confirm: wait for it, with a deadline)
        wait_for(lambda: queue_counts(node_url, dlq_name(name))[0] == 2, timeout=30, what="DLQ")
        channel = conn.channel()
        dead_letters = []
        while (message := channel.basic_get(dlq_name(name), no_ack=True)) is not None:
            dead_letters.append(message)
        channel.close()
    assert [m.properties["message_id"] for m in dead_letters] == sent[:2]
    for message in dead_letters:
        death = message.properties["application_headers"]["x-death"][0]
        assert death["reason"] == "maxlen"
        assert death["queue"] == name
    assert drain_ids(node_url, name) == sent[2:]
    print("drop-head: sent=5 kept=3 dead-lettered=2 (reason maxlen)")
