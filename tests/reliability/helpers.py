"""Helpers of the reliability tests: a real Celery worker process, queue counts, id ledgers."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

from kombu import Connection

from tests.reliability.node import wait_for

__all__ = ["Ledger", "WorkerProcess", "queue_counts", "read_ids"]

REPO = Path(__file__).resolve().parents[2]


def queue_counts(url: str, queue: str) -> tuple[int, int]:
    """(messages ready, consumers) of ``queue``, by a passive declare."""
    with Connection(url, connect_timeout=5) as connection:
        channel = connection.channel()
        try:
            _, messages, consumers = channel.queue_declare(queue, passive=True)
        finally:
            channel.close()
    return int(messages), int(consumers)


def read_ids(directory: Path, kind: str) -> Counter[str]:
    """How often each id appears in ``<kind>.log`` of a worker's record dir."""
    path = directory / f"{kind}.log"
    if not path.exists():
        return Counter()
    return Counter(line.split()[1] for line in path.read_text().splitlines() if line.strip())


@dataclass
class Ledger:
    """What a test sent and what came back, by id; the numbers the report quotes."""

    sent: set[str] = field(default_factory=set)
    confirmed: set[str] = field(default_factory=set)
    failed_attempts: int = 0
    received: Counter[str] = field(default_factory=Counter)

    @property
    def lost(self) -> set[str]:
        """Confirmed ids that never arrived: must be empty."""
        return self.confirmed - set(self.received)

    @property
    def duplicates(self) -> int:
        """Deliveries beyond the first, summed over ids (at-least-once allows them)."""
        return sum(n - 1 for n in self.received.values() if n > 1)

    def summary(self) -> str:
        """One line for logs and docs/RELIABILITY.md."""
        return (
            f"sent={len(self.sent)} confirmed={len(self.confirmed)} "
            f"failed_attempts={self.failed_attempts} received={len(self.received)} "
            f"duplicates={self.duplicates} lost={len(self.lost)}"
        )


@dataclass
class WorkerProcess:
    """A real ``celery worker`` of ``workerapp`` on a node, recording into ``record_dir``."""

    url: str
    record_dir: Path
    queues: tuple[str, ...] = ("research.tasks",)
    pool: str = "threads"
    concurrency: int = 4
    env: dict[str, str] = field(default_factory=dict)
    #: ``-n`` of the worker; service accounts allow only their own node-name prefix.
    node_name: str | None = None
    process: subprocess.Popen[bytes] | None = None
    #: Every worker started in this process, so a fixture can kill leftovers.
    started: ClassVar[list[WorkerProcess]] = []

    @property
    def log_path(self) -> Path:
        """Where the worker's output goes."""
        return self.record_dir / "worker.log"

    def command(self) -> list[str]:
        """The worker's command line."""
        return [
            sys.executable,
            "-m",
            "celery",
            "-A",
            "tests.reliability.workerapp",
            "worker",
            "-Q",
            ",".join(self.queues),
            "-P",
            self.pool,
            "-c",
            str(self.concurrency),
            "--without-mingle",
            "--without-gossip",
            "-l",
            "INFO",
            "-n",
            self.node_name or f"rel-{os.getpid()}-{id(self) % 10000}@%h",
        ]

    def start(self, *, wait: bool = True, timeout: float = 60.0) -> WorkerProcess:
        """Start the worker; with ``wait``, until the broker shows its consumer."""
        self.record_dir.mkdir(parents=True, exist_ok=True)
        env = {
            **os.environ,
            "RABBITMQ_URL": self.url,
            "KITTY_REL_DIR": str(self.record_dir),
            **self.env,
        }
        env["PYTHONPATH"] = f"{REPO}{os.pathsep}{env.get('PYTHONPATH', '')}"
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                self.command(),
                env=env,
                cwd=REPO,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        WorkerProcess.started.append(self)
        if wait:
            self.wait_consuming(timeout=timeout)
        return self

    def wait_consuming(self, timeout: float = 60.0) -> None:
        """Poll until every queue of the worker has a consumer."""

        def consuming() -> bool:
            if self.process is not None and self.process.poll() is not None:
                raise AssertionError(f"worker exited {self.process.returncode}:\n{self.log_tail()}")
            return all(queue_counts(self.url, q)[1] > 0 for q in self.queues)

        wait_for(consuming, timeout=timeout, what="worker consuming")

    @property
    def alive(self) -> bool:
        """True while the worker's main process lives."""
        return self.process is not None and self.process.poll() is None

    def children(self) -> list[int]:
        """Pids of the worker's direct children (prefork pool processes)."""
        if self.process is None:
            return []
        path = Path(f"/proc/{self.process.pid}/task/{self.process.pid}/children")
        return [int(p) for p in path.read_text().split()] if path.exists() else []

    def kill(self, sig: int = signal.SIGKILL) -> None:
        """Send ``sig`` to the whole worker (main process and pool)."""
        if self.process is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, sig)
        self.process.wait(timeout=30)

    def stop(self) -> None:
        """Stop quickly: SIGTERM (warm shutdown) then SIGKILL after a bound."""
        if self.process is None or not self.alive:
            return
        os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.kill()
        else:
            self.kill()

    def log_tail(self, lines: int = 60) -> str:
        """The last lines of the worker's output."""
        if not self.log_path.exists():
            return ""
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
