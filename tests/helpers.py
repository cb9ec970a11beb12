"""Test helpers: real ``celery worker`` subprocesses and polling with a deadline."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TypeVar

from kombu import Connection

ROOT = Path(__file__).resolve().parent.parent
#: The installed ``kitty-tasks`` entry point, next to the interpreter running the tests.
KITTY_TASKS = str(Path(sys.executable).with_name("kitty-tasks"))
T = TypeVar("T")


def wait_for(
    condition: Callable[[], T], timeout: float = 30.0, interval: float = 0.1, what: str = ""
) -> T:
    """Poll ``condition`` until it returns something truthy; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what or condition}")
        time.sleep(interval)


def queue_counts(url: str, queue: str) -> tuple[int, int]:
    """(ready messages, consumers) of ``queue``, fresh from the broker (passive declare)."""
    with Connection(url) as connection:
        channel = connection.channel()
        _, messages, consumers = channel.queue_declare(queue, passive=True)
        channel.close()
        return int(messages), int(consumers)


class CeleryWorker:
    """A real ``celery -A kitty_tasks worker`` subprocess on the given queues."""

    def __init__(
        self,
        url: str,
        queues: Sequence[str],
        *,
        concurrency: int = 1,
        pool: str = "prefork",
        include: Sequence[str] = (),
        env: dict[str, str] | None = None,
        extra_args: Sequence[str] = (),
    ) -> None:
        self.url = url
        self.queues = list(queues)
        self.name = f"test-{uuid.uuid4().hex[:8]}@%h"
        fd, log = tempfile.mkstemp(prefix="celery-worker-", suffix=".log")
        os.close(fd)  # start() reopens it for the worker's output
        self.log = Path(log)
        self.args = [
            sys.executable, "-m", "celery", "-A", "kitty_tasks", "worker",
            "-Q", ",".join(self.queues), "-c", str(concurrency), "-P", pool, "-n", self.name,
            "--without-mingle", "--without-gossip", "--loglevel", "INFO",
            *(f"--include={module}" for module in include), *extra_args,
        ]  # fmt: skip
        self.env = {**os.environ, "RABBITMQ_URL": url, **(env or {})}
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 60.0) -> CeleryWorker:
        """Start the worker and wait until it consumes every one of its queues."""
        with self.log.open("wb") as log:
            self.process = subprocess.Popen(
                self.args, cwd=ROOT, env=self.env, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True,
            )  # fmt: skip

        def consuming() -> bool:
            if self.process is not None and self.process.poll() is not None:
                raise AssertionError(f"worker exited early:\n{self.output()}")
            return all(queue_counts(self.url, q)[1] > 0 for q in self.queues)

        wait_for(consuming, timeout, 0.25, what=f"a worker consuming {self.queues}")
        return self

    def stop(self, timeout: float = 30.0) -> int:
        """Warm shutdown (SIGTERM); kill the group if it does not exit in time. Returns the code."""
        if self.process is None:
            return 0
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(10)
        return int(self.process.returncode)

    def output(self) -> str:
        """Everything the worker logged so far."""
        return self.log.read_text(errors="replace")

    def __enter__(self) -> CeleryWorker:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
