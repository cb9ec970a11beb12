"""A replay cannot be redirected: a dead letter goes back to its own queue or stays put."""

from __future__ import annotations

import json

import pytest
from kombu import Connection, Exchange, Producer

from tests.helpers import queue_counts
from tests.integration.ops_support import cli

pytestmark = [pytest.mark.rabbitmq]


def _plant(url: str, queue: str, headers: dict[str, str]) -> None:
    """Put a message straight into ``queue``, as anyone allowed to publish to it could."""
    with Connection(url) as connection:
        Producer(connection.channel(), exchange=Exchange("")).publish(
            b'{"planted": true}', routing_key=queue, headers=headers,
            content_type="application/json", content_encoding="utf-8",
        )  # fmt: skip


def test_a_planted_header_naming_another_queue_leaves_the_message_in_its_dlq(
    ops_url: str,
) -> None:
    # Given a dead letter in research.tasks.dlq whose header names cad.tasks
    _plant(ops_url, "research.tasks.dlq", {"x-kitty-original-queue": "cad.tasks"})
    # When an operator replays research.tasks.dlq
    result = cli(ops_url, "dlq", "replay", "research.tasks.dlq", "--json")
    # Then nothing reaches cad.tasks (nor research.tasks): the message stays, with the reason
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["replayed"] == []
    assert [m["why"] for m in report["left"]] == [
        "its header names queue 'cad.tasks'; a dead letter of 'research.tasks.dlq' "
        "replays only to 'research.tasks'"
    ]
    assert queue_counts(ops_url, "cad.tasks")[0] == 0
    assert queue_counts(ops_url, "research.tasks")[0] == 0
    assert queue_counts(ops_url, "research.tasks.dlq")[0] == 1


def test_an_honest_dead_letter_goes_back_to_its_own_queue(ops_url: str) -> None:
    _plant(ops_url, "research.tasks.dlq", {"x-kitty-original-queue": "research.tasks"})
    result = cli(ops_url, "dlq", "replay", "research.tasks.dlq")
    assert result.exit_code == 0, result.output
    assert "replayed 1 of 1 examined message(s) from research.tasks.dlq to research.tasks" in (
        result.output
    )
    assert queue_counts(ops_url, "research.tasks")[0] == 1
    assert queue_counts(ops_url, "research.tasks.dlq")[0] == 0


def test_the_catch_all_dlq_replays_only_where_the_operator_says(ops_url: str) -> None:
    # Given a message in dlx.queue that names research.tasks
    _plant(ops_url, "dlx.queue", {"x-kitty-original-queue": "research.tasks"})
    # When it is replayed without --to, it stays, and the operator is told why
    plain = cli(ops_url, "dlq", "replay", "dlx.queue")
    assert plain.exit_code == 0, plain.output
    assert "need an explicit target: replay with --to QUEUE" in plain.output
    assert queue_counts(ops_url, "dlx.queue")[0] == 1
    assert queue_counts(ops_url, "research.tasks")[0] == 0
    # And with --to it goes where the operator said, not where its header says
    moved = cli(ops_url, "dlq", "replay", "dlx.queue", "--to", "brain.commands")
    assert moved.exit_code == 0, moved.output
    assert queue_counts(ops_url, "brain.commands")[0] == 1
    assert queue_counts(ops_url, "research.tasks")[0] == 0
    assert queue_counts(ops_url, "dlx.queue")[0] == 0


def test_to_cannot_send_a_queue_dlq_elsewhere(ops_url: str) -> None:
    _plant(ops_url, "research.tasks.dlq", {})
    result = cli(ops_url, "dlq", "replay", "research.tasks.dlq", "--to", "cad.tasks")
    assert result.exit_code == 2
    assert "replay only to 'research.tasks', not 'cad.tasks'" in result.output
    assert queue_counts(ops_url, "research.tasks.dlq")[0] == 1
