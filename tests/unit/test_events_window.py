"""The replay window: durations and times in, a checked half-open window out."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from events.errors import ConfigurationError
from events.window import ReplayWindow, parse_when

NOW = datetime(2026, 11, 30, 12, 0, tzinfo=timezone.utc)


@pytest.mark.parametrize(
    ("text", "ago"),
    [
        ("30s", timedelta(seconds=30)),
        ("10m", timedelta(minutes=10)),
        ("2h30m", timedelta(hours=2, minutes=30)),
        ("7d", timedelta(days=7)),
        (timedelta(minutes=5), timedelta(minutes=5)),
    ],
)
def test_durations_count_back_from_now(text: str | timedelta, ago: timedelta) -> None:
    assert parse_when(text, now=NOW) == NOW - ago


def test_iso_times_are_utc_and_a_time_without_offset_is_taken_as_utc() -> None:
    assert parse_when("2026-11-30T10:00:00Z", now=NOW) == datetime(
        2026, 11, 30, 10, tzinfo=timezone.utc
    )
    assert parse_when("2026-11-30T11:00:00+01:00", now=NOW) == datetime(
        2026, 11, 30, 10, tzinfo=timezone.utc
    )
    assert parse_when("2026-11-30T10:00", now=NOW).tzinfo == timezone.utc


@pytest.mark.parametrize("text", ["10x", "m10", "-5m", "", "yesterday", "10 m"])
def test_anything_else_is_refused_with_both_forms_named(text: str) -> None:
    with pytest.raises(ConfigurationError, match=r"neither a duration ago .* nor an ISO 8601"):
        parse_when(text, now=NOW, option="since")


def test_a_duration_too_long_is_refused_not_overflowed() -> None:
    with pytest.raises(ConfigurationError, match="'99999999d' reaches back before year 1"):
        parse_when("99999999d", now=NOW, option="since")


def test_a_window_is_half_open_and_matches_types_as_bindings_do() -> None:
    window = ReplayWindow.build("10m", "5m", "fabrication.*.started", now=NOW)
    start = NOW - timedelta(minutes=10)
    assert window.selects("fabrication.print.started", start)
    assert not window.selects("fabrication.print.started", NOW - timedelta(minutes=5))
    assert not window.selects("fabrication.print.started", start - timedelta(microseconds=1))
    assert not window.selects("fabrication.print.job.started", start)
    assert ReplayWindow.build("10m", now=NOW).until == NOW


@pytest.mark.parametrize(
    ("since", "until", "pattern", "message"),
    [
        ("5m", "10m", "#", "must be before until"),
        ("10m", "10m", "#", "must be before until"),
        ("2027-01-01", "2027-02-01", "#", "in the future"),
        ("10m", None, "fabrication..#", "is not a topic pattern"),
        ("10m", None, "Fabrication.#", "is not a topic pattern"),
    ],
)
def test_bad_windows_are_refused(since: str, until: str | None, pattern: str, message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        ReplayWindow.build(since, until, pattern, now=NOW)
