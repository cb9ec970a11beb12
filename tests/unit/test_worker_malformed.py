"""Task messages of the wrong shape are recognised before Celery fails them silently."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pytest

from kitty_tasks.runtime.worker import malformed_reason


@dataclass
class FakeMessage:
    """The two attributes ``malformed_reason`` reads."""

    payload: Any
    headers: dict[str, Any] = field(default_factory=lambda: {"task": "t"})


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (None, "body is NoneType"),
        (0, "body is int"),
        ([[], {}], "body is list"),
        (["a", {}, {}], "args is str"),
        ([[], [], {}], "kwargs is list"),
        ([[], {}, 5], "embed is int"),
    ],
)
def test_wrong_shapes_are_named(payload: Any, reason: str) -> None:
    # Given a task message whose body is not [args, kwargs, embed]
    # Then the reason says which part is wrong
    assert (malformed_reason(FakeMessage(payload)) or "").startswith(reason)


@pytest.mark.parametrize(
    "message",
    [
        FakeMessage([[1], {"a": 1}, {}]),
        FakeMessage([[], {}, None]),
        FakeMessage(None, headers={}),  # no task header: Celery's on_unknown_message handles it
    ],
)
def test_good_shapes_and_non_task_messages_pass(message: FakeMessage) -> None:
    # Given a well-formed task message, or one that is not a protocol-2 task at all
    # Then nothing is reported
    assert malformed_reason(message) is None
