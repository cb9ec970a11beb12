"""Broker-side gauges (queue depth and consumers, DLQ depth and oldest age), read on each scrape."""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Gauge, start_http_server
from prometheus_client.registry import Collector

from kitty_tasks.core.connection import connected
from kitty_tasks.core.management import ManagementClient
from kitty_tasks.core.metrics import DLQ_DEPTH, DLQ_OLDEST_AGE, QUEUE_CONSUMERS, QUEUE_DEPTH
from kitty_tasks.ops.queues import is_dead_letter_queue
from kitty_tasks.ops.replay import list_dlqs

__all__ = ["BROKER_UP", "BrokerCollector", "serve"]

logger = logging.getLogger(__name__)

#: 1 when the last scrape could read the broker, 0 when it could not.
BROKER_UP = Gauge(
    "kitty_exporter_broker_up", "Whether the last scrape could read the broker", registry=None
)


class BrokerCollector(Collector):
    """Reads the broker when Prometheus scrapes, so the numbers are never older than the scrape."""

    def __init__(self, url: str, management: ManagementClient, vhost: str) -> None:
        self.url = url
        self.management = management
        self.vhost = vhost
        # Scrapes can overlap (two Prometheus servers); the gauges are shared state.
        self._lock = threading.Lock()

    def refresh(self) -> None:
        """Set every gauge from the broker; clears queues that no longer exist."""
        queues: list[dict[str, Any]] = self.management.queues(self.vhost)
        for gauge in (QUEUE_DEPTH, QUEUE_CONSUMERS, DLQ_DEPTH, DLQ_OLDEST_AGE):
            gauge.clear()
        for queue in queues:
            name = str(queue["name"])
            if is_dead_letter_queue(name):
                continue
            QUEUE_DEPTH.labels(queue=name).set(int(queue.get("messages") or 0))
            QUEUE_CONSUMERS.labels(queue=name).set(int(queue.get("consumers") or 0))
        # DLQs over AMQP: the depth is exact and the head's age needs a peek anyway.
        with connected(self.url) as connection:
            for summary in list_dlqs(connection, [str(q["name"]) for q in queues]):
                DLQ_DEPTH.labels(queue=summary.name).set(summary.depth)
                DLQ_OLDEST_AGE.labels(queue=summary.name).set(summary.oldest_age_seconds or 0.0)

    def collect(self) -> Iterator[Any]:
        """Refresh from the broker, then yield the gauges (only ``broker_up`` when it fails)."""
        with self._lock:
            try:
                self.refresh()
            except Exception as err:  # a scrape must answer, with up=0
                logger.error("cannot read the broker for metrics: %s", err)
                BROKER_UP.set(0)
                yield from BROKER_UP.collect()
                return
            BROKER_UP.set(1)
            for gauge in (BROKER_UP, QUEUE_DEPTH, QUEUE_CONSUMERS, DLQ_DEPTH, DLQ_OLDEST_AGE):
                yield from gauge.collect()


def serve(
    url: str,
    management: ManagementClient,
    vhost: str,
    *,
    port: int,
    addr: str = "0.0.0.0",  # noqa: S104 - an exporter is there to be scraped from outside
) -> Any:
    """Serve the broker gauges on ``addr:port`` in a background thread; returns the server."""
    registry = CollectorRegistry()
    registry.register(BrokerCollector(url, management, vhost))
    return start_http_server(port, addr=addr, registry=registry)
