"""Topic routing: event types (the routing keys), subscription patterns, how they match."""

from __future__ import annotations

import re
from functools import lru_cache

__all__ = [
    "EVENT_TYPE_PATTERN",
    "MAX_EVENT_TYPE_LENGTH",
    "check_event_type",
    "check_pattern",
    "topic_matches",
]

#: Lower-case dotted words, e.g. ``fabrication.print.started`` (service.entity.action).
#: One or two words are accepted too, because the KITT guide publishes ``event.type``.
EVENT_TYPE_PATTERN = re.compile(r"^[a-z0-9][a-z0-9_-]*(\.[a-z0-9][a-z0-9_-]*)*$")
#: AMQP routing keys are short strings: at most 255 bytes.
MAX_EVENT_TYPE_LENGTH = 255

_WORD = r"(\*|#|[a-z0-9_-]+)"
#: A binding pattern: dotted lower-case words, ``*`` (one word) or ``#`` (zero or more).
PATTERN = re.compile(rf"^{_WORD}(\.{_WORD})*$")


def check_event_type(event_type: object) -> str:
    """Return ``event_type`` if it is a valid dotted lower-case name, else raise ``ValueError``."""
    if not isinstance(event_type, str):
        raise ValueError(f"event_type must be a str, got {type(event_type).__name__}")
    if len(event_type.encode()) > MAX_EVENT_TYPE_LENGTH or not EVENT_TYPE_PATTERN.match(event_type):
        raise ValueError(
            f"event_type {event_type!r} is not a lower-case dotted name like "
            "'service.entity.action' (letters, digits, '_' and '-'; no wildcards, no empty words)"
        )
    return event_type


def check_pattern(pattern: object) -> str:
    """Return ``pattern`` if it is a valid topic pattern, else raise ``ValueError``."""
    if not isinstance(pattern, str) or not PATTERN.match(pattern) or len(pattern.encode()) > 255:
        raise ValueError(
            f"pattern {pattern!r} is not a topic pattern like 'fabrication.print.#' "
            "(lower-case dotted words, '*' for one word, '#' for any number)"
        )
    return pattern


@lru_cache(maxsize=1024)
def topic_matches(pattern: str, routing_key: str) -> bool:
    """True if a topic binding ``pattern`` selects ``routing_key``, as RabbitMQ decides."""
    return _match(tuple(pattern.split(".")), tuple(routing_key.split(".")))


def _match(pattern: tuple[str, ...], words: tuple[str, ...]) -> bool:
    if not pattern:
        return not words
    head, rest = pattern[0], pattern[1:]
    if head == "#":
        return any(_match(rest, words[i:]) for i in range(len(words) + 1))
    if not words:
        return False
    return (head in ("*", words[0])) and _match(rest, words[1:])
