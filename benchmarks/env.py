"""The benchmark's own vhost on the shared broker: created per run, topology applied, deleted."""

from __future__ import annotations

import os
import urllib.parse
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import amqp
from kombu import Connection

from kitty_tasks.core.declarer import apply_topology
from kitty_tasks.core.management import ManagementClient
from kitty_tasks.core.settings import DEFAULT_RABBITMQ_URL
from kitty_tasks.core.topology import STREAMS

__all__ = ["BenchEnv", "bench_env"]

#: Where worker subprocesses leave their first/last-task marks (git-ignored).
WORK_DIR = Path(__file__).parent / ".work"


@dataclass(frozen=True)
class BenchEnv:
    """One run's vhost: its AMQP URL, host/credentials for raw clients, and a scratch dir."""

    url: str
    vhost: str
    host: str
    port: int
    user: str
    password: str
    workdir: Path
    management: ManagementClient

    def amqp_connection(self) -> amqp.Connection:
        """A fresh py-amqp connection to the vhost (what the baselines use)."""
        conn = amqp.Connection(
            f"{self.host}:{self.port}",
            userid=self.user,
            password=self.password,
            virtual_host=self.vhost,
        )
        conn.connect()
        return conn

    def subprocess_env(self) -> dict[str, str]:
        """Environment for worker and server subprocesses: the vhost URL and the mark dir."""
        return {
            **os.environ,
            "RABBITMQ_URL": self.url,
            "KITTY_BENCH_MARKS": str(self.workdir),
            "PYTHONPATH": str(Path(__file__).parent.parent),
        }

    def purge(self, *queues: str) -> None:
        """Empty ``queues`` so every trial starts from a fresh, empty queue; streams are kept.

        A stream cannot be purged (the broker closes the connection): it is an append-only
        log that only its retention trims, and appending costs the same at any length.
        """
        conn = self.amqp_connection()
        try:
            channel = conn.channel()
            for queue in queues:
                if queue not in STREAMS:
                    channel.queue_purge(queue)
        finally:
            conn.close()

    def depth(self, queue: str) -> int:
        """Ready messages in ``queue`` (passive declare: exact, unlike the management stats)."""
        conn = self.amqp_connection()
        try:
            return int(conn.channel().queue_declare(queue, passive=True).message_count)
        finally:
            conn.close()


@contextmanager
def bench_env(base_url: str | None = None, management_url: str | None = None) -> Iterator[BenchEnv]:
    """A fresh vhost with the platform's topology; deleted afterwards, even on failure."""
    base = base_url or os.environ.get("RABBITMQ_URL", DEFAULT_RABBITMQ_URL)
    mgmt_url = management_url or os.environ.get("KITTY_MANAGEMENT_URL", "http://localhost:15672")
    parsed = urllib.parse.urlsplit(base)
    user = urllib.parse.unquote(parsed.username or "guest")
    password = urllib.parse.unquote(parsed.password or "guest")
    client = ManagementClient.from_urls(mgmt_url, base)
    vhost = f"kitty-bench-{uuid.uuid4().hex[:8]}"
    client.create_vhost(vhost, user)
    url = urllib.parse.urlunsplit(parsed._replace(path="/" + urllib.parse.quote(vhost, safe="")))
    workdir = WORK_DIR / vhost
    workdir.mkdir(parents=True, exist_ok=True)
    try:
        with Connection(url) as connection:
            apply_topology(connection)
        yield BenchEnv(
            url=url,
            vhost=vhost,
            host=parsed.hostname or "localhost",
            port=parsed.port or 5672,
            user=user,
            password=password,
            workdir=workdir,
            management=client,
        )
    finally:
        client.delete_vhost(vhost)
