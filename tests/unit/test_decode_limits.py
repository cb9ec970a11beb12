"""Bodies that break decoders become clear errors: deep nesting, oversized task arguments."""

from __future__ import annotations

import pytest

from events.envelope import Event
from events.errors import DecodeError
from kitty_tasks.core.errors import PayloadTooLarge
from kitty_tasks.runtime.sending import check_size


def test_deeply_nested_event_body_is_a_decode_error_not_a_recursion_error() -> None:
    # Given a body of 10,000 nested arrays
    body = b"[" * 10_000 + b"]" * 10_000
    # When it is decoded, Then the bus gets a DecodeError it dead-letters (no requeue loop)
    with pytest.raises(DecodeError, match="nested too deeply"):
        Event.decode(body)


def test_task_arguments_over_the_limit_are_refused_before_publishing() -> None:
    # Given arguments of 2 MiB as JSON (the default limit is 1 MiB)
    # Then the size check raises PayloadTooLarge naming the setting
    with pytest.raises(PayloadTooLarge, match="KITTY_MAX_MESSAGE_BYTES"):
        check_size("t", ("a" * 2 * 1024 * 1024,), {})
    # and small or non-JSON arguments pass (Celery reports the latter itself)
    check_size("t", (1,), {"x": "y"})
    check_size("t", (object(),), {})
