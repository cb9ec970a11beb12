"""The confirmed publisher's defaults, without a broker."""

from __future__ import annotations

import pytest
from kombu import Connection

from kitty_tasks.core.publisher import ConfirmedPublisher
from kitty_tasks.core.settings import get_settings


def test_confirm_wait_defaults_to_kitty_publish_timeout(monkeypatch: pytest.MonkeyPatch) -> None:
    # Given KITTY_PUBLISH_TIMEOUT=2.5 (DLQ replay builds its publisher without a timeout)
    monkeypatch.setenv("KITTY_PUBLISH_TIMEOUT", "2.5")
    get_settings.cache_clear()
    try:
        # Then a publisher waits that long for confirms, unless told otherwise
        assert ConfirmedPublisher(Connection("memory://")).confirm_timeout == 2.5
        assert ConfirmedPublisher(Connection("memory://"), confirm_timeout=7).confirm_timeout == 7
    finally:
        get_settings.cache_clear()
