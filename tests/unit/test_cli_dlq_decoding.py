"""Dead letters decoded from both header kinds, grouped, filtered, and rewritten for replay."""

from __future__ import annotations

import json
from datetime import datetime, timezone
from typing import Any

from kitty_tasks.core.topology import (
    FAILURE_HEADERS,
    H_ATTEMPT,
    H_ATTEMPTS,
    H_ERROR_MESSAGE,
    H_ERROR_TYPE,
    H_FIRST_FAILURE,
    H_LAST_FAILURE,
    H_MAX_RETRIES,
    H_ORIGINAL_QUEUE,
    H_TRACEBACK,
)
from kitty_tasks.ops.dlq import (
    H_PUBLISHED_AT,
    H_REPLAYS,
    decode_dead_letter,
    group_by_error,
    matches,
    replay_headers,
    replay_properties,
)

CELERY_BODY = json.dumps([[3], {}, {"callbacks": None}]).encode()


def kitty_task_properties(**extra: Any) -> dict[str, Any]:
    """Properties of a task message the platform dead-lettered after two attempts."""
    headers = {
        "task": "research.paper",
        "id": "task-1",
        "retries": 1,
        H_ERROR_TYPE: "ValueError",
        H_ERROR_MESSAGE: "bad input",
        H_TRACEBACK: "Traceback ...",
        H_ATTEMPTS: 2,
        H_FIRST_FAILURE: "2026-01-02T03:04:05+00:00",
        H_LAST_FAILURE: "2026-01-02T03:04:10+00:00",
        H_ORIGINAL_QUEUE: "research.tasks",
        H_ATTEMPT: 2,
        H_MAX_RETRIES: 1,
        **extra,
    }
    return {
        "content_type": "application/json",
        "content_encoding": "utf-8",
        "priority": 7,
        "correlation_id": "task-1",
        "application_headers": headers,
    }


def broker_properties(reason: str = "rejected") -> dict[str, Any]:
    """Properties of a message RabbitMQ dead-lettered itself (``x-death``)."""
    return {
        "content_type": "application/x-unknown",
        "application_headers": {
            "x-death": [
                {
                    "count": 1,
                    "reason": reason,
                    "queue": "cad.tasks",
                    "time": datetime(2026, 1, 2, 3, 4, 5, tzinfo=timezone.utc),
                    "exchange": "kitty.tasks",
                    "routing-keys": ["cad.tasks"],
                }
            ],
            "x-first-death-queue": "cad.tasks",
            "x-first-death-reason": reason,
        },
    }


def test_a_task_dead_lettered_by_the_platform_is_decoded_from_its_kitty_headers() -> None:
    letter = decode_dead_letter(CELERY_BODY, kitty_task_properties(), dlq="research.tasks.dlq")

    assert (letter.kind, letter.type, letter.id) == ("task", "research.paper", "task-1")
    assert (letter.error_type, letter.error_message) == ("ValueError", "bad input")
    assert letter.attempts == 2
    assert letter.first_failure == "2026-01-02T03:04:05+00:00"
    assert letter.last_failure == "2026-01-02T03:04:10+00:00"
    assert letter.original_queue == "research.tasks"
    assert letter.reason_source == "kitty"
    assert letter.priority == 7


def test_a_message_dead_lettered_by_the_broker_is_decoded_from_x_death() -> None:
    letter = decode_dead_letter(b"\x80\x04garbage", broker_properties(), dlq="cad.tasks.dlq")

    assert letter.kind == "unknown"
    assert letter.error_type == "broker:rejected"
    assert "rejected" in letter.error_message
    assert letter.attempts == 1
    assert letter.first_failure == "2026-01-02T03:04:05+00:00"
    assert letter.original_queue == "cad.tasks"
    assert letter.reason_source == "broker"


def test_an_event_dead_letter_is_named_by_its_event_type() -> None:
    body = json.dumps(
        {"event_id": "ev-1", "event_type": "fabrication.print.started", "data": {}}
    ).encode()
    properties = {
        "content_type": "application/json",
        "application_headers": {
            H_ERROR_TYPE: "RuntimeError",
            H_ERROR_MESSAGE: "handler broke",
            H_ORIGINAL_QUEUE: "fabrication.events",
        },
    }

    letter = decode_dead_letter(body, properties, dlq="fabrication.events.dlq")

    assert (letter.kind, letter.type, letter.id) == ("event", "fabrication.print.started", "ev-1")
    assert letter.original_queue == "fabrication.events"


def test_without_any_reason_headers_the_dlq_name_still_gives_the_original_queue() -> None:
    letter = decode_dead_letter(
        b"{}", {"content_type": "application/json"}, dlq="notifications.dlq"
    )

    assert (letter.error_type, letter.reason_source) == ("unknown", "none")
    assert letter.original_queue == "notifications"
    assert decode_dead_letter(b"{}", {}, dlq="dlx.queue").original_queue is None


def test_age_is_counted_from_the_last_failure() -> None:
    letter = decode_dead_letter(CELERY_BODY, kitty_task_properties(), dlq="research.tasks.dlq")
    died = datetime(2026, 1, 2, 3, 4, 10, tzinfo=timezone.utc).timestamp()

    assert letter.age_seconds(now=died + 90) == 90


def test_groups_count_by_error_type_biggest_first() -> None:
    letters = [
        decode_dead_letter(
            CELERY_BODY, kitty_task_properties(), dlq="research.tasks.dlq", position=i
        )
        for i in range(3)
    ] + [decode_dead_letter(b"x", broker_properties(), dlq="cad.tasks.dlq", position=3)]

    groups = group_by_error(letters)

    assert [(g.error_type, g.count) for g in groups] == [("ValueError", 3), ("broker:rejected", 1)]
    assert groups[0].types == {"research.paper": 3}
    assert groups[0].sample_message == "bad input"


def test_filters_match_error_type_or_task_type_as_globs() -> None:
    letter = decode_dead_letter(CELERY_BODY, kitty_task_properties(), dlq="research.tasks.dlq")

    assert matches(letter, [])
    assert matches(letter, ["ValueError"])
    assert matches(letter, ["research.*"])
    assert matches(letter, ["KeyError", "research.paper"])
    assert not matches(letter, ["KeyError"])
    assert not matches(letter, ["valueerror"])


def test_replay_resets_the_attempt_counters_and_drops_the_failure_history() -> None:
    properties = kitty_task_properties(**{"x-death": [{"count": 1}], "x-first-death-queue": "q"})
    properties["expiration"] = "1000"
    properties["user_id"] = "someone"

    fresh = replay_properties(properties, now=1234.5)
    headers = fresh["application_headers"]

    assert headers["retries"] == 0
    assert not set(headers) & {*FAILURE_HEADERS, H_ATTEMPT, "x-death", "x-first-death-queue"}
    assert headers[H_MAX_RETRIES] == 1  # the per-message budget is kept
    assert (headers["task"], headers["id"]) == ("research.paper", "task-1")
    assert headers[H_REPLAYS] == 1
    assert headers[H_PUBLISHED_AT] == 1234.5
    assert "expiration" not in fresh
    assert "user_id" not in fresh
    assert (fresh["priority"], fresh["correlation_id"], fresh["delivery_mode"]) == (7, "task-1", 2)
    assert properties["application_headers"]["retries"] == 1  # the original is untouched


def test_replaying_twice_counts_the_replays() -> None:
    assert replay_headers({H_REPLAYS: 2})[H_REPLAYS] == 3
    assert "retries" not in replay_headers({"some": "header"})
