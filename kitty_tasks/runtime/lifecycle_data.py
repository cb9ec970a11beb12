"""What a task lifecycle event says: its domain, and its data with large results summarised."""

from __future__ import annotations

import json
import re
from typing import Any

from kombu.utils.json import dumps as json_dumps

from kitty_tasks.core.errors import ConfigurationError

__all__ = [
    "ERROR_MESSAGE_CHARS",
    "INLINE_RESULT_BYTES",
    "check_lifecycle_options",
    "error_data",
    "summarise_result",
    "task_domain",
]

#: A result up to this many bytes of JSON rides in its completed event; a larger one is summarised.
INLINE_RESULT_BYTES = 4096
#: Longest error message an event carries (the DLQ copy keeps the traceback).
ERROR_MESSAGE_CHARS = 2000
#: Room kept for the envelope and the other fields when a small KITTY_MAX_MESSAGE_BYTES caps the
#: inline result.
ENVELOPE_ROOM = 1024
#: A domain is one word of an event type.
DOMAIN_PATTERN = re.compile(r"^[a-z0-9][a-z0-9_-]*$")
#: Used when neither the queue nor the task name gives a usable word.
FALLBACK_DOMAIN = "kitty"
STORED_NOTE = (
    "too large for the event; the full result is in the result store: AsyncResult(task_id)"
)


def check_lifecycle_options(task: str, enabled: object, domain: object) -> None:
    """Raise ``ConfigurationError`` for a task's bad ``lifecycle_events``/``event_domain``."""
    if not isinstance(enabled, bool):
        raise ConfigurationError(
            f"task {task!r}: lifecycle_events must be True or False, got {enabled!r}"
        )
    if domain is not None and not (isinstance(domain, str) and DOMAIN_PATTERN.match(domain)):
        raise ConfigurationError(
            f"task {task!r}: event_domain must be one lower-case word (letters, digits, "
            f"'_' and '-'), e.g. 'research', got {domain!r}"
        )


def task_domain(task: str, queue: str, explicit: str | None = None) -> str:
    """The ``<domain>`` of a task's events: explicit, else the queue's, else the task name's.

    ``research.tasks`` -> ``research`` (so ``kitty.dispatch`` there is research work);
    a dotless queue such as ``celery`` gives way to the task name (``cad.generate`` -> ``cad``).
    """
    if explicit:
        return explicit
    dotted = [name for name in (queue, task) if "." in name]
    for name in (*dotted, queue, task):
        word = re.sub(r"[^a-z0-9_-]+", "-", name.split(".", 1)[0].lower()).strip("-_")
        if DOMAIN_PATTERN.match(word):
            return word
    return FALLBACK_DOMAIN


def _json_type(value: Any) -> str:
    if isinstance(value, dict):
        return "object"
    if isinstance(value, (list, tuple)):
        return "array"
    if isinstance(value, str):
        return "string"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    return "null" if value is None else type(value).__name__


def summarise_result(result: Any, max_message_bytes: int) -> dict[str, Any]:
    """``{"result": ...}`` as JSON values, or ``{"result_summary": ...}`` when it is too large.

    The inline limit is ``INLINE_RESULT_BYTES``, lower when ``max_message_bytes`` is small,
    so an event never exceeds KITTY_MAX_MESSAGE_BYTES because of its result.
    """
    limit = min(INLINE_RESULT_BYTES, max(0, max_message_bytes - ENVELOPE_ROOM))
    if result is None or (type(result) in (bool, int) and -(2**53) < result < 2**53):
        # What most tasks return, already a JSON value: no round trip through the encoder
        # (an int as large as 2**53 goes there, for its size).
        return {"result": result}
    try:
        # Kombu's encoder, as the result backend's: dates, UUIDs and decimals become text.
        text = json_dumps(result)
    except (TypeError, ValueError):
        return {
            "result_summary": {
                "type": type(result).__name__,
                "size": 0,
                "note": "not JSON; see the result store: AsyncResult(task_id)",
            }
        }
    size = len(text.encode())
    if size > limit:
        return {"result_summary": {"type": _json_type(result), "size": size, "note": STORED_NOTE}}
    return {"result": json.loads(text)}


def error_data(exc: BaseException | None) -> dict[str, str]:
    """``{"type", "message"}`` of the exception that ended a task, the message trimmed."""
    if exc is None:
        return {"type": "Unknown", "message": ""}
    message = str(exc)
    if len(message) > ERROR_MESSAGE_CHARS:
        message = message[: ERROR_MESSAGE_CHARS - 3] + "..."
    return {"type": type(exc).__name__, "message": message}
