"""Where a replay may send a dead letter: its own queue, never where a header points."""

from __future__ import annotations

import pytest

from kitty_tasks.ops.dlq import decode_dead_letter
from kitty_tasks.ops.replay import refusal, replay_target


def test_a_queue_dlq_replays_to_its_own_queue_only() -> None:
    assert replay_target("research.tasks.dlq") == "research.tasks"
    assert replay_target("research.tasks.dlq", to="research.tasks") == "research.tasks"
    with pytest.raises(ValueError, match=r"replay only to 'research\.tasks', not 'cad\.tasks'"):
        replay_target("research.tasks.dlq", to="cad.tasks")


def test_the_catch_all_needs_an_explicit_target() -> None:
    assert replay_target("dlx.queue") is None
    assert replay_target("dlx.queue", to="cad.tasks") == "cad.tasks"
    letter = decode_dead_letter(b"{}", {}, dlq="dlx.queue")
    assert refusal(letter, None, "dlx.queue") == (
        "messages in dlx.queue need an explicit target: replay with --to QUEUE"
    )
    assert refusal(letter, "cad.tasks", "dlx.queue") is None


def test_a_work_queue_is_not_a_dead_letter_queue() -> None:
    with pytest.raises(ValueError, match="is not a dead-letter queue"):
        replay_target("research.tasks")


def test_a_header_naming_another_queue_keeps_the_message_in_its_dlq() -> None:
    planted = decode_dead_letter(
        b"{}", {"application_headers": {"x-kitty-original-queue": "cad.tasks"}},
        dlq="research.tasks.dlq",
    )  # fmt: skip
    assert refusal(planted, "research.tasks", "research.tasks.dlq") == (
        "its header names queue 'cad.tasks'; a dead letter of 'research.tasks.dlq' "
        "replays only to 'research.tasks'"
    )
    honest = decode_dead_letter(b"{}", {}, dlq="research.tasks.dlq")
    assert refusal(honest, "research.tasks", "research.tasks.dlq") is None
