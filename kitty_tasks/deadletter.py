"""Why a message died: the ``x-kitty-*`` failure headers, shared by tasks, events and RPC."""

from __future__ import annotations

import traceback
from datetime import datetime, timezone
from typing import Any

from kitty_tasks.topology import (
    H_ATTEMPTS,
    H_ERROR_MESSAGE,
    H_ERROR_TYPE,
    H_FIRST_FAILURE,
    H_LAST_FAILURE,
    H_ORIGINAL_QUEUE,
    H_TRACEBACK,
)

__all__ = ["MESSAGE_LIMIT", "TRACEBACK_LIMIT", "failure_headers", "utc_now"]

#: Tracebacks are trimmed to their last this-many characters in a dead letter's headers.
TRACEBACK_LIMIT = 4000
#: Error messages are trimmed so that headers stay small.
MESSAGE_LIMIT = 1000


def utc_now() -> str:
    """The current UTC time, ISO 8601."""
    return datetime.now(timezone.utc).isoformat()


def failure_headers(
    exc: BaseException, *, attempts: int, first_failure: str | None, queue: str
) -> dict[str, Any]:
    """The ``x-kitty-*`` headers that say why a message died after ``attempts`` attempts."""
    trace = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    return {
        H_ERROR_TYPE: type(exc).__name__,
        H_ERROR_MESSAGE: str(exc)[:MESSAGE_LIMIT],
        H_TRACEBACK: trace[-TRACEBACK_LIMIT:],
        H_ATTEMPTS: attempts,
        H_FIRST_FAILURE: first_failure or utc_now(),
        H_LAST_FAILURE: utc_now(),
        H_ORIGINAL_QUEUE: queue,
    }
