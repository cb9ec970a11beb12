"""Fixtures the unit tests share."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from kombu import Connection


@pytest.fixture
def no_broker(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """Record (and refuse) every broker connection attempt made while the test runs."""
    attempts: list[str] = []

    def refuse(self: Connection, *args: Any, **kwargs: Any) -> None:
        attempts.append(self.as_uri())
        raise AssertionError(f"a broker connection was opened to {self.as_uri()}")

    monkeypatch.setattr(Connection, "_establish_connection", refuse)
    yield attempts
    assert attempts == []
