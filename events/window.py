"""A replay's time window: ``--since``/``--until`` as durations ago or absolute times."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

from events.errors import ConfigurationError
from events.routing import check_pattern, topic_matches

__all__ = ["ReplayWindow", "parse_when"]

_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}
_PART = re.compile(r"(\d+)([smhd])")
_DURATION = re.compile(r"^(\d+[smhd])+$")


def _duration(text: str) -> timedelta:
    total = timedelta()
    for amount, unit in _PART.findall(text):
        total += timedelta(**{_UNITS[unit]: int(amount)})
    return total


def parse_when(
    value: str | datetime | timedelta, *, now: datetime, option: str = "time"
) -> datetime:
    """An aware UTC time from ``10m``/``2h30m``/``7d`` ago, ISO 8601, a datetime or a timedelta.

    A time without a UTC offset is taken as UTC. Anything else raises ``ConfigurationError``.
    """
    if isinstance(value, datetime):
        moment = value
    elif isinstance(value, timedelta) or (
        isinstance(value, str) and _DURATION.match(value.strip())
    ):
        try:
            moment = now - (value if isinstance(value, timedelta) else _duration(value.strip()))
        except OverflowError:
            raise ConfigurationError(f"{option} {value!r} reaches back before year 1") from None
    else:
        try:
            moment = datetime.fromisoformat(str(value).strip())
        except ValueError:
            raise ConfigurationError(
                f"{option} {value!r} is neither a duration ago (30s, 10m, 2h30m, 7d) nor an "
                "ISO 8601 time (2026-11-30T10:00:00Z)"
            ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return moment.astimezone(timezone.utc)


@dataclass(frozen=True)
class ReplayWindow:
    """Events whose own timestamp is in [since, until) and whose type matches ``pattern``."""

    since: datetime
    until: datetime
    pattern: str = "#"

    @classmethod
    def build(
        cls,
        since: str | datetime | timedelta,
        until: str | datetime | timedelta | None = None,
        pattern: str = "#",
        *,
        now: datetime | None = None,
    ) -> ReplayWindow:
        """Check and resolve the inputs; ``until`` defaults to now (the replay's start)."""
        now = now or datetime.now(timezone.utc)
        start = parse_when(since, now=now, option="since")
        end = now if until is None else parse_when(until, now=now, option="until")
        if start >= end:
            raise ConfigurationError(
                f"since ({start.isoformat()}) must be before until ({end.isoformat()})"
            )
        if start > now:
            raise ConfigurationError(f"since ({start.isoformat()}) is in the future")
        try:
            check_pattern(pattern)
        except ValueError as err:
            raise ConfigurationError(str(err)) from None
        return cls(start, end, pattern)

    def selects(self, event_type: str, timestamp: datetime) -> bool:
        """True for an event of this type and time."""
        return self.since <= timestamp < self.until and topic_matches(self.pattern, event_type)
