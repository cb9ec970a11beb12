"""Processes of one worker share a metrics port: the first serves, the others say so calmly."""

from __future__ import annotations

import logging
import socket
from pathlib import Path

import pytest

from kitty_tasks.core import metrics


def test_a_taken_port_in_multiprocess_mode_is_left_to_the_process_serving_it(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # Given a port already served (by the first research process) and a shared samples directory
    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    holder.listen()
    port = holder.getsockname()[1]
    monkeypatch.setenv(metrics.MULTIPROC_ENV, str(tmp_path))
    monkeypatch.setattr(metrics, "_serving", {})
    try:
        # When a second process of the same worker asks to serve on it
        with caplog.at_level(logging.INFO, logger=metrics.__name__):
            served = metrics.serve_metrics(port, addr="127.0.0.1")
    finally:
        holder.close()

    # Then it serves nothing, and says where its samples go, without an error
    assert served is None
    assert [r.levelname for r in caplog.records] == ["INFO"]
    assert str(tmp_path) in caplog.records[0].getMessage()


def test_a_taken_port_of_a_single_process_worker_is_an_error(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    holder.listen()
    port = holder.getsockname()[1]
    monkeypatch.delenv(metrics.MULTIPROC_ENV, raising=False)
    monkeypatch.setattr(metrics, "_serving", {})
    try:
        with caplog.at_level(logging.INFO, logger=metrics.__name__):
            served = metrics.serve_metrics(port, addr="127.0.0.1")
    finally:
        holder.close()

    assert served is None
    assert [r.levelname for r in caplog.records] == ["ERROR"]
