"""Helpers of the event-bus integration tests: collecting handlers, running buses, reading DLQs."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from kombu import Connection

from events import Event, EventBus

#: A ladder of ~0.1 s, ~0.4 s, ~1.6 s waits instead of 1 s, 4 s, 16 s.
FAST_BACKOFF = 0.1


def unique(prefix: str) -> str:
    """A name no other test of this run uses."""
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


class Collector:
    """A handler that records every event it is given; tests wait on it."""

    def __init__(self, fail_times: int = 0, fail_with: type[Exception] = RuntimeError) -> None:
        self.events: list[Event] = []
        self.fail_times = fail_times
        self.fail_with = fail_with
        self._cond = threading.Condition()

    def __call__(self, event: Event) -> None:
        with self._cond:
            self.events.append(event)
            calls = len(self.events)
            self._cond.notify_all()
        if calls <= self.fail_times:
            raise self.fail_with(f"failure {calls} of {self.fail_times}")

    @property
    def ids(self) -> list[str]:
        """Event ids in the order received (duplicates kept)."""
        with self._cond:
            return [e.event_id for e in self.events]

    def wait_for(self, predicate: Callable[[list[Event]], bool], timeout: float = 20.0) -> None:
        """Wait until ``predicate(events)`` holds; fail with what was received otherwise."""
        with self._cond:
            if not self._cond.wait_for(lambda: predicate(self.events), timeout):
                raise AssertionError(
                    f"timed out after {timeout}s; got {len(self.events)} event(s): "
                    f"{[e.event_type for e in self.events][:20]}"
                )

    def wait_for_id(self, event_id: str, timeout: float = 20.0) -> None:
        """Wait until the event ``event_id`` was received."""
        self.wait_for(lambda events: any(e.event_id == event_id for e in events), timeout)


@contextmanager
def consuming(bus: EventBus) -> Iterator[EventBus]:
    """Run ``bus``'s subscriptions in the background; stop and disconnect afterwards."""
    bus.start_consuming(block=False)
    try:
        assert bus.wait_until_consuming(15), "subscriptions did not start consuming"
        yield bus
    finally:
        bus.disconnect()


@dataclass
class Received:
    """A message read back from a queue: its headers, properties and body."""

    headers: dict[str, Any]
    properties: dict[str, Any]
    body: bytes


def drain(url: str, queue: str) -> list[Received]:
    """Take every message now in ``queue`` (acked: they are gone afterwards)."""
    received: list[Received] = []
    with Connection(url) as connection:
        channel = connection.default_channel
        while True:
            message = channel.basic_get(queue, no_ack=True)
            if message is None:
                return received
            received.append(
                Received(dict(message.headers or {}), dict(message.properties), message.body)
            )


def drain_until(url: str, queue: str, count: int, timeout: float = 20.0) -> list[Received]:
    """Take messages from ``queue`` until ``count`` arrived; fail after ``timeout``."""
    received: list[Received] = []
    deadline = time.monotonic() + timeout
    while len(received) < count:
        received += drain(url, queue)
        if time.monotonic() > deadline:
            raise AssertionError(f"{queue} has {len(received)} message(s), expected {count}")
        time.sleep(0.05)
    return received


def purge(url: str, queue: str) -> None:
    """Empty ``queue`` (the guide's shared queues collect events of earlier tests)."""
    with Connection(url) as connection:
        connection.default_channel.queue_purge(queue)
