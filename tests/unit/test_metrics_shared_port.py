"""Processes of one worker share a metrics port: the first serves, the others say so calmly."""

from __future__ import annotations

import logging
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from kitty_tasks.core import metrics


@pytest.fixture
def taken_port(monkeypatch: pytest.MonkeyPatch) -> Iterator[int]:
    """A port already served (as by the first research process), and no port served here."""
    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    holder.listen()
    monkeypatch.setattr(metrics, "_serving", {})
    try:
        yield holder.getsockname()[1]
    finally:
        holder.close()


def _serve_logging(port: int, caplog: pytest.LogCaptureFixture) -> tuple[object, list[str]]:
    """What ``serve_metrics`` on ``port`` returned, and the levels it logged at."""
    with caplog.at_level(logging.INFO, logger=metrics.__name__):
        served = metrics.serve_metrics(port, addr="127.0.0.1")
    return served, [r.levelname for r in caplog.records]


def test_a_taken_port_in_multiprocess_mode_is_left_to_the_process_serving_it(
    taken_port: int,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    # Given a shared samples directory
    monkeypatch.setenv(metrics.MULTIPROC_ENV, str(tmp_path))
    # When a second process of the same worker asks to serve on the taken port
    served, levels = _serve_logging(taken_port, caplog)
    # Then it serves nothing, and says where its samples go, without an error
    assert served is None
    assert levels == ["INFO"]
    assert str(tmp_path) in caplog.records[0].getMessage()


def test_a_taken_port_of_a_single_process_worker_is_an_error(
    taken_port: int, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.delenv(metrics.MULTIPROC_ENV, raising=False)

    served, levels = _serve_logging(taken_port, caplog)

    assert served is None
    assert levels == ["ERROR"]
