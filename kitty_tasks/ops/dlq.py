"""Dead letters decoded for people: what died, why, how often, and where it came from.

Two kinds of headers say why: the platform's own ``x-kitty-*`` failure headers
(a task or handler gave up) and RabbitMQ's ``x-death`` (the broker dead-lettered
the message: rejected as undecodable, expired, queue full). This module reads
both, and builds the message that a replay publishes; it never talks to a broker.
"""

from __future__ import annotations

import fnmatch
import json
import time
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from typing import Any

from kitty_tasks.core.topology import (
    BROKER_DEATH_HEADERS,
    DLQ_SUFFIX,
    FAILURE_HEADERS,
    H_ATTEMPT,
    H_ATTEMPTS,
    H_ERROR_MESSAGE,
    H_ERROR_TYPE,
    H_FIRST_FAILURE,
    H_LAST_FAILURE,
    H_ORIGINAL_QUEUE,
    H_PUBLISHED_AT,
    H_REPLAYS,
)
from kitty_tasks.core.tracing import trace_id_of

__all__ = [
    "H_PUBLISHED_AT",
    "H_REPLAYS",
    "DeadLetter",
    "ErrorGroup",
    "TriageGroup",
    "decode_dead_letter",
    "group_by_cause",
    "group_by_error",
    "matches",
    "replay_headers",
    "replay_properties",
]


#: Properties a replay must not copy: a stale expiry would kill the message again,
#: and user_id is checked against the replaying operator's own login.
_DROPPED_PROPERTIES = frozenset({"expiration", "user_id", "application_headers"})
#: How much of an undecodable body ``show`` prints.
PREVIEW_LIMIT = 200


@dataclass(frozen=True)
class DeadLetter:
    """One dead letter, decoded; ``position`` is its place in the DLQ (0 = head)."""

    position: int
    kind: str  # task, event or unknown
    type: str  # task name, event type, or "?" when the body says nothing
    id: str | None
    error_type: str
    error_message: str
    attempts: int | None
    first_failure: str | None
    last_failure: str | None
    original_queue: str | None
    reason_source: str  # kitty (x-kitty-* headers), broker (x-death) or none
    priority: int | None
    preview: str
    #: The W3C trace id the message carried (``traceparent``), when it was traced.
    trace_id: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        return asdict(self)

    def age_seconds(self, now: float | None = None) -> float | None:
        """Seconds since the message died (its last failure), if the headers say when."""
        stamp = self.last_failure or self.first_failure
        if stamp is None:
            return None
        died = parse_time(stamp)
        if died is None:
            return None
        return max(0.0, (now if now is not None else time.time()) - died)


@dataclass(frozen=True)
class ErrorGroup:
    """Dead letters that died of the same error type."""

    error_type: str
    count: int
    types: dict[str, int]
    sample_message: str

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        return asdict(self)


@dataclass
class TriageGroup:
    """Dead letters of one error type and one task/event type, with their failure span."""

    error_type: str
    type: str
    count: int = 0
    first_failure: str | None = None
    last_failure: str | None = None
    sample_message: str = ""

    def add(self, letter: DeadLetter) -> None:
        """Count ``letter`` in, widening the span of failure times."""
        self.count += 1
        if not self.sample_message:
            self.sample_message = letter.error_message
        first = letter.first_failure or letter.last_failure
        last = letter.last_failure or letter.first_failure
        # ISO 8601 strings in UTC (what decoding produces) sort as times do.
        if first and (self.first_failure is None or first < self.first_failure):
            self.first_failure = first
        if last and (self.last_failure is None or last > self.last_failure):
            self.last_failure = last


def parse_time(value: Any) -> float | None:
    """Unix time of an ISO 8601 string, a datetime or a number; None when it is none of these."""
    if isinstance(value, datetime):
        stamp = value if value.tzinfo else value.replace(tzinfo=timezone.utc)
        return stamp.timestamp()
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str):
        try:
            stamp = datetime.fromisoformat(value)
        except ValueError:
            return None
        return (stamp if stamp.tzinfo else stamp.replace(tzinfo=timezone.utc)).timestamp()
    return None


def _iso(value: Any) -> str | None:
    seconds = parse_time(value)
    if seconds is None:
        return None if value is None else str(value)
    return datetime.fromtimestamp(seconds, timezone.utc).isoformat()


def _text(value: Any) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    return "" if value is None else str(value)


def _int(value: Any) -> int | None:
    try:
        return None if value is None else int(value)
    except (TypeError, ValueError):
        return None


def _decode_body(body: bytes | str, content_type: str | None) -> Any:
    if content_type and "json" not in content_type:
        return None
    try:
        return json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return None


def _first_death(headers: Mapping[str, Any]) -> Mapping[str, Any] | None:
    deaths = headers.get("x-death")
    if isinstance(deaths, Sequence) and deaths and isinstance(deaths[0], Mapping):
        # RabbitMQ puts the most recent death first.
        return deaths[0]
    return None


def _what(
    headers: Mapping[str, Any], properties: Mapping[str, Any], payload: Any
) -> tuple[str, str, str | None]:
    if "task" in headers and "id" in headers:
        return "task", _text(headers["task"]), _text(headers["id"])
    if isinstance(payload, Mapping) and "event_type" in payload:
        event_id = payload.get("event_id") or properties.get("message_id")
        return "event", _text(payload["event_type"]), _text(event_id) if event_id else None
    kind_hint = properties.get("type")
    message_id = properties.get("message_id")
    return (
        "unknown",
        _text(kind_hint) if kind_hint else "?",
        _text(message_id) if message_id else None,
    )


def decode_dead_letter(
    body: bytes | str,
    properties: Mapping[str, Any],
    *,
    dlq: str,
    position: int = 0,
) -> DeadLetter:
    """Decode one message of ``dlq`` from its body and AMQP properties (headers included)."""
    headers: Mapping[str, Any] = properties.get("application_headers") or {}
    payload = _decode_body(body, properties.get("content_type"))
    kind, type_, ident = _what(headers, properties, payload)
    death = _first_death(headers)
    original_queue = headers.get(H_ORIGINAL_QUEUE)
    if H_ERROR_TYPE in headers:
        source = "kitty"
        error_type = _text(headers[H_ERROR_TYPE])
        error_message = _text(headers.get(H_ERROR_MESSAGE))
        attempts = _int(headers.get(H_ATTEMPTS))
        first_failure = _iso(headers.get(H_FIRST_FAILURE))
        last_failure = _iso(headers.get(H_LAST_FAILURE))
    elif death is not None:
        source = "broker"
        reason = _text(death.get("reason")) or "unknown"
        error_type = f"broker:{reason}"
        error_message = f"dead-lettered by the broker ({reason}) from {_text(death.get('queue'))!r}"
        attempts = _int(death.get("count"))
        first_failure = _iso(death.get("time"))
        last_failure = first_failure
        original_queue = original_queue or death.get("queue")
    else:
        source = "none"
        error_type, error_message = "unknown", "no x-kitty-* or x-death headers"
        attempts = first_failure = last_failure = None
    if not original_queue and dlq.endswith(DLQ_SUFFIX):
        original_queue = dlq[: -len(DLQ_SUFFIX)]
    raw = body.decode("utf-8", errors="replace") if isinstance(body, bytes) else body
    return DeadLetter(
        position=position,
        kind=kind,
        type=type_,
        id=ident,
        error_type=error_type,
        error_message=error_message,
        attempts=attempts,
        first_failure=first_failure,
        last_failure=last_failure,
        original_queue=_text(original_queue) if original_queue else None,
        reason_source=source,
        priority=_int(properties.get("priority")),
        preview=raw[:PREVIEW_LIMIT],
        trace_id=trace_id_of(headers),
    )


def group_by_error(letters: Iterable[DeadLetter]) -> list[ErrorGroup]:
    """Dead letters grouped by error type, biggest group first."""
    counts: Counter[str] = Counter()
    types: dict[str, Counter[str]] = {}
    samples: dict[str, str] = {}
    for letter in letters:
        counts[letter.error_type] += 1
        types.setdefault(letter.error_type, Counter())[letter.type] += 1
        samples.setdefault(letter.error_type, letter.error_message)
    return [
        ErrorGroup(error, count, dict(types[error].most_common()), samples[error])
        for error, count in sorted(counts.items(), key=lambda item: (-item[1], item[0]))
    ]


def group_by_cause(letters: Iterable[DeadLetter]) -> list[TriageGroup]:
    """Dead letters grouped by (error type, task/event type), biggest group first."""
    groups: dict[tuple[str, str], TriageGroup] = {}
    for letter in letters:
        key = (letter.error_type, letter.type)
        groups.setdefault(key, TriageGroup(*key)).add(letter)
    return sorted(groups.values(), key=lambda g: (-g.count, g.error_type, g.type))


def matches(letter: DeadLetter, patterns: Sequence[str]) -> bool:
    """True when no patterns are given, or one matches the error type or the task/event type.

    Patterns are shell globs (``ValueError``, ``research.*``, ``broker:*``).
    """
    if not patterns:
        return True
    return any(
        fnmatch.fnmatchcase(letter.error_type, pattern) or fnmatch.fnmatchcase(letter.type, pattern)
        for pattern in patterns
    )


def replay_headers(headers: Mapping[str, Any], *, now: float | None = None) -> dict[str, Any]:
    """The headers a replayed message carries: failure history dropped, attempts back to zero."""
    dropped = {*FAILURE_HEADERS, H_ATTEMPT, *BROKER_DEATH_HEADERS}
    fresh = {key: value for key, value in headers.items() if key not in dropped}
    if "retries" in fresh:
        # Celery's own retry counter: the task gets its full retry budget again.
        fresh["retries"] = 0
    fresh[H_REPLAYS] = (_int(headers.get(H_REPLAYS)) or 0) + 1
    fresh[H_PUBLISHED_AT] = now if now is not None else time.time()
    return fresh


def replay_properties(properties: Mapping[str, Any], *, now: float | None = None) -> dict[str, Any]:
    """AMQP properties for the replayed copy: the original's, with fresh headers."""
    kept = {key: value for key, value in properties.items() if key not in _DROPPED_PROPERTIES}
    kept["application_headers"] = replay_headers(
        properties.get("application_headers") or {}, now=now
    )
    kept["delivery_mode"] = 2
    return kept
