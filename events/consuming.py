"""The bus's consumer threads: one per subscription, started, awaited and stopped together."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable

from kombu.connection import Connection

from events.consumer import Process, SubscriptionConsumer
from events.errors import ConfigurationError
from events.subscriptions import Subscription, ladder_topology

__all__ = ["ConsumerThreads"]


class ConsumerThreads:
    """Runs a ``SubscriptionConsumer`` per subscription, each on a thread and connection of its own.

    Args:
        process_for: how a subscription's deliveries are handled.
        declare: redeclare each subscription's topology on every (re)connect.
    """

    def __init__(self, process_for: Callable[[Subscription], Process], *, declare: bool) -> None:
        self.process_for = process_for
        self.declare = declare
        #: Set by ``request_stop``; cuts the consumers' waits short.
        self.stopping = threading.Event()
        self._consumers: list[SubscriptionConsumer] = []
        self._threads: list[threading.Thread] = []
        self._lock = threading.Lock()

    @property
    def running(self) -> bool:
        """True while any consumer thread is alive."""
        return any(t.is_alive() for t in self._threads)

    def start(self, connection: Connection, subscriptions: Iterable[Subscription]) -> None:
        """Start a consumer thread per subscription (``connection`` is cloned for each)."""
        with self._lock:
            if self.running:
                raise ConfigurationError("this bus is already consuming")
            self.stopping.clear()
            self._consumers = [self._consumer(connection, s) for s in subscriptions]
            self._threads = [
                threading.Thread(target=c.run_forever, name=f"events:{c.queue}", daemon=True)
                for c in self._consumers
            ]
            for thread in self._threads:
                thread.start()

    def _consumer(self, connection: Connection, subscription: Subscription) -> SubscriptionConsumer:
        topologies = (ladder_topology(), subscription.topology) if self.declare else ()
        return SubscriptionConsumer(
            connection,
            queue=subscription.queue,
            prefetch_count=subscription.prefetch_count,
            process=self.process_for(subscription),
            topologies=topologies,
            stopping=self.stopping,
        )

    def wait_until_consuming(self, timeout: float) -> bool:
        """Wait until every subscription has a consumer on the broker; False on timeout."""
        deadline = time.monotonic() + timeout
        consumers = list(self._consumers)
        for consumer in consumers:
            if not consumer.ready.wait(max(0.0, deadline - time.monotonic())):
                return False
        return bool(consumers)

    def request_stop(self) -> None:
        """Flag every consumer to stop after its event in hand; returns at once."""
        self.stopping.set()
        for consumer in list(self._consumers):
            consumer.should_stop = True

    def stop(self, timeout: float | None) -> None:
        """``request_stop``, then wait for the threads (except the calling one)."""
        self.request_stop()
        current = threading.current_thread()
        for thread in list(self._threads):
            if thread is not current and thread.is_alive():
                thread.join(timeout)
