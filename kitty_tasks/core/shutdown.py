"""SIGINT and SIGTERM as a clean stop for blocking consumers (EventBus, RPCServer)."""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import FrameType
from typing import Any

__all__ = ["STOP_SIGNALS", "stop_on_signals"]

#: Ctrl-C, and what `docker stop`, honcho and systemd send.
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


@contextmanager
def stop_on_signals(request_stop: Callable[[], None]) -> Iterator[None]:
    """While inside, SIGINT and SIGTERM call ``request_stop``; the old handlers come back after.

    ``request_stop`` must only flag the stop and return: it runs in the main thread,
    between two bytecodes of whatever that thread was doing. Installed explicitly,
    because a process started in the background inherits SIGINT ignored, and Python's
    default SIGTERM ends the process without finishing the message in hand. Outside
    the main thread signals cannot be handled, and nothing is installed.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handle(signum: int, frame: FrameType | None) -> None:
        request_stop()

    previous: dict[signal.Signals, Any] = {}
    try:
        for signum in STOP_SIGNALS:
            previous[signum] = signal.signal(signum, handle)
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
