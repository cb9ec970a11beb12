"""Broker-side gauges (queue depth and consumers, DLQ depth and oldest age), read on each scrape."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from kitty_tasks.core.connection import connected
from kitty_tasks.core.management import ManagementClient
from kitty_tasks.ops.queues import is_dead_letter_queue, is_reported, rpc_service_queues
from kitty_tasks.ops.replay import list_dlqs

__all__ = ["BrokerCollector", "serve"]

logger = logging.getLogger(__name__)

#: name -> help text of every series the exporter serves; all but ``broker_up`` by queue.
FAMILIES = {
    "kitty_exporter_broker_up": "Whether the last scrape could read the broker",
    "kitty_queue_depth": "Messages ready and unacked in a queue",
    "kitty_queue_consumers": "Consumers of a queue",
    "kitty_dlq_depth": "Dead letters waiting in a DLQ",
    "kitty_dlq_oldest_age_seconds": "Age of the oldest dead letter in a DLQ",
}


def _family(name: str) -> GaugeMetricFamily:
    labels = [] if name == "kitty_exporter_broker_up" else ["queue"]
    return GaugeMetricFamily(name, FAMILIES[name], labels=labels)


class BrokerCollector(Collector):
    """Reads the broker when Prometheus scrapes, so the numbers are never older than the scrape.

    Each scrape builds its metric families afresh: nothing is shared between scrapes
    or with the process's own metrics, and a queue that is gone is simply not listed.
    """

    def __init__(self, url: str, management: ManagementClient, vhost: str) -> None:
        self.url = url
        self.management = management
        self.vhost = vhost

    def describe(self) -> Iterator[GaugeMetricFamily]:
        """The families, without samples (lets the registry check names without a scrape)."""
        for name in FAMILIES:
            yield _family(name)

    def read(self) -> dict[str, GaugeMetricFamily]:
        """One reading of the broker, as metric families by name."""
        families = {name: _family(name) for name in FAMILIES if name != "kitty_exporter_broker_up"}
        # Only the platform's queues: uuid-named reply and result queues come and go, and
        # each would be a new label value (a new series) in Prometheus.
        rpc_queues = rpc_service_queues(self.management, self.vhost)
        queues: list[dict[str, Any]] = [
            q for q in self.management.queues(self.vhost) if is_reported(str(q["name"]), rpc_queues)
        ]
        for queue in queues:
            name = str(queue["name"])
            if is_dead_letter_queue(name):
                continue
            families["kitty_queue_depth"].add_metric([name], int(queue.get("messages") or 0))
            families["kitty_queue_consumers"].add_metric([name], int(queue.get("consumers") or 0))
        # DLQs over AMQP: the depth is exact and the head's age needs a peek anyway.
        with connected(self.url) as connection:
            for summary in list_dlqs(connection, [str(q["name"]) for q in queues]):
                families["kitty_dlq_depth"].add_metric([summary.name], summary.depth)
                families["kitty_dlq_oldest_age_seconds"].add_metric(
                    [summary.name], summary.oldest_age_seconds or 0.0
                )
        return families

    def collect(self) -> Iterator[GaugeMetricFamily]:
        """Read the broker, then yield the families (only ``broker_up`` = 0 when it fails)."""
        up = _family("kitty_exporter_broker_up")
        try:
            families = self.read()
        except Exception as err:  # a scrape must answer, with up=0
            logger.error("cannot read the broker for metrics: %s", err)
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up
        yield from families.values()


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
