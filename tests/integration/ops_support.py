"""Helpers of the operations tests: a vhost of their own, the CLI in-process, scraping /metrics."""

from __future__ import annotations

import socket
import urllib.parse
import urllib.request
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

from click.testing import CliRunner, Result
from kombu import Connection
from prometheus_client.parser import text_string_to_metric_families

from kitty_tasks.core.declarer import apply_topology
from kitty_tasks.core.management import ManagementClient
from kitty_tasks.core.topology import TOPOLOGY, Topology
from kitty_tasks.ops.cli import main
from tests.conftest import BASE_URL, MANAGEMENT_URL, url_for_vhost


@contextmanager
def own_vhost(client: ManagementClient, topology: Topology = TOPOLOGY) -> Iterator[str]:
    """A fresh vhost with ``topology`` applied, for one test; yields its AMQP URL."""
    vhost = f"kitty-ops-{uuid.uuid4().hex[:8]}"
    user = urllib.parse.unquote(urllib.parse.urlsplit(BASE_URL).username or "guest")
    client.create_vhost(vhost, user)
    url = url_for_vhost(vhost)
    try:
        with Connection(url) as connection:
            apply_topology(connection, topology)
        yield url
    finally:
        client.delete_vhost(vhost)


def cli(url: str, *args: str, input: str | None = None) -> Result:
    """Run ``kitty-tasks --url URL ARGS`` in-process, as a user would type it."""
    return CliRunner().invoke(
        main, ["--url", url, "--management-url", MANAGEMENT_URL, *args], input=input
    )


def free_port() -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def scrape(port: int) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Every sample of ``http://127.0.0.1:port/metrics``, keyed by (name, labels)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as resp:
        text = resp.read().decode()
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def sample(
    samples: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str, **labels: str
) -> float | None:
    """The value of one sample, or None when it is not exposed."""
    return samples.get((name, frozenset(labels.items())))
