"""Task cases: confirmed enqueue, and draining 20,000 pre-enqueued no-op tasks."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import amqp

from benchmarks import marks
from benchmarks.cpu import CpuClock, broker_pid
from benchmarks.env import BenchEnv
from benchmarks.harness import Case, Sample, Target, Variant, measure
from benchmarks.payload import PAYLOAD, body
from kitty_tasks.core.topology import BRAIN_COMMANDS, RESEARCH_TASKS, TASKS_EXCHANGE

__all__ = ["TaskBulk", "TaskDrain", "TaskEnqueue"]

#: Seconds a drain may take before the trial counts as failed.
DRAIN_TIMEOUT = 240.0
#: Worker processes on both sides of the drain (the machine has 2 cores).
DRAIN_PROCESSES = 2
#: Set (to anything) to also drain with DRAIN_PROCESSES single-process ``--pool solo`` workers;
#: off by default: it adds ~2.5 minutes and lost to prefork (benchmarks/RESULTS.md, F4).
SOLO_ENV = "BENCH_DRAIN_SOLO"
#: Threads of the research worker's defaults (the Procfile's KITTY_RESEARCH_CONCURRENCY).
RESEARCH_THREADS = 8
#: Worker processes of the research defaults (`make run`'s KITTY_RESEARCH_PROCESSES, compose's
#: replicas): one threads worker per core.
RESEARCH_PROCESSES = 2
#: The research defaults' variant, the drain target's platform side.
RESEARCH_DEFAULTS = f"celery threads {RESEARCH_PROCESSES} x {RESEARCH_THREADS} (research defaults)"


class TaskEnqueue(Case):
    """``task.delay()`` and ``TaskQueue.submit`` vs py-amqp per-message confirm, Dramatiq send."""

    name = "task_enqueue"
    title = "task enqueue, confirmed"

    def setup(self, env: BenchEnv, *, quick: bool) -> None:
        from benchmarks import tasks_celery, tasks_dramatiq
        from kitty_tasks.runtime.taskqueue import TaskQueue

        self.env = env
        self.count = 300 if quick else 1000
        self.clock = CpuClock(broker_pid())
        tasks_celery.app.conf.broker_url = env.url
        self.noop = tasks_celery.noop
        self.taskqueue = TaskQueue(env.url, RESEARCH_TASKS).connect()
        self.dramatiq = tasks_dramatiq.noop
        self.dramatiq.send(-1, -1, PAYLOAD)  # declares Dramatiq's queues
        self.raw = env.amqp_connection()
        self.raw_channel = self.raw.channel()
        self.raw_channel.confirm_select()
        self._purge()

    def _purge(self) -> None:
        from benchmarks.tasks_dramatiq import QUEUE

        self.env.purge(BRAIN_COMMANDS, RESEARCH_TASKS, QUEUE)

    def variants(self) -> list[Variant]:
        return [
            Variant("task.delay", self._delay, platform=True),
            Variant("TaskQueue.submit", self._submit, platform=True),
            Variant("task.delay, Celery's publish (before)", self._delay_celery, platform=True),
            Variant("py-amqp confirm", self._raw),
            Variant("Dramatiq send", self._dramatiq),
        ]

    def targets(self) -> list[Target]:
        return [
            Target(
                "task enqueue >= 0.9 x raw confirmed",
                "task.delay",
                "py-amqp confirm",
                threshold=0.9,
            ),
            Target("task enqueue >= Dramatiq send", "task.delay", "Dramatiq send", threshold=1.0),
            Target(
                "TaskQueue.submit >= 0.9 x raw confirmed",
                "TaskQueue.submit",
                "py-amqp confirm",
                threshold=0.9,
            ),
        ]

    def _delay(self) -> Sample:
        with measure(self.clock, self.count) as sample:
            for i in range(self.count):
                self.noop.delay(i, -1, PAYLOAD)
        self._purge()
        return sample

    def _delay_celery(self) -> Sample:
        # A producer of the pool passed in: Celery's send_task and kombu's confirmed publish,
        # the path every task took before the direct one (minus a pool acquire per call).
        from benchmarks import tasks_celery

        with (
            measure(self.clock, self.count) as sample,
            tasks_celery.app.producer_pool.acquire(block=True) as producer,
        ):
            for i in range(self.count):
                self.noop.apply_async((i, -1, PAYLOAD), producer=producer)
        self._purge()
        return sample

    def _submit(self) -> Sample:
        with measure(self.clock, self.count) as sample:
            for _ in range(self.count):
                self.taskqueue.submit("bench_noop", PAYLOAD)
        self._purge()
        return sample

    def _raw(self) -> Sample:
        channel = self.raw_channel
        with measure(self.clock, self.count) as sample:
            for i in range(self.count):
                channel.basic_publish_confirm(
                    amqp.Message(body(i), delivery_mode=2, content_type="application/json"),
                    exchange=TASKS_EXCHANGE,
                    routing_key=BRAIN_COMMANDS,
                    mandatory=True,
                )
        self._purge()
        return sample

    def _dramatiq(self) -> Sample:
        with measure(self.clock, self.count) as sample:
            for i in range(self.count):
                self.dramatiq.send(i, -1, PAYLOAD)
        self._purge()
        return sample

    def teardown(self) -> None:
        for closer in (getattr(self, "raw", None), getattr(self, "taskqueue", None)):
            if closer is not None:
                try:
                    closer.close() if isinstance(closer, amqp.Connection) else closer.disconnect()
                except Exception as err:  # a failed teardown must not hide the trial's error
                    print(f"  teardown: {err}", file=sys.stderr)


class TaskBulk(Case):
    """``group(...).apply_async()`` and ``submit_many`` of one batch vs raw pipelined confirms."""

    name = "task_bulk"
    title = "bulk task enqueue, confirmed (one batch)"

    def setup(self, env: BenchEnv, *, quick: bool) -> None:
        from benchmarks import tasks_celery
        from kitty_tasks.runtime.taskqueue import TaskQueue

        self.env = env
        self.count = 500 if quick else 2000
        self.clock = CpuClock(broker_pid())
        self.app = tasks_celery.app
        self.app.conf.broker_url = env.url
        self.noop = tasks_celery.noop
        self.taskqueue = TaskQueue(env.url, RESEARCH_TASKS).connect()
        self.raw = env.amqp_connection()
        self.raw_channel = self.raw.channel()
        self.raw_channel.confirm_select()
        self.raw_tags = 0
        self.env.purge(BRAIN_COMMANDS, RESEARCH_TASKS)

    def variants(self) -> list[Variant]:
        return [
            Variant("group.apply_async", self._group, platform=True),
            Variant("TaskQueue.submit_many", self._submit_many, platform=True),
            Variant("group, a confirm per task (before)", self._group_per_task, platform=True),
            Variant("py-amqp pipelined confirms", self._raw),
        ]

    def targets(self) -> list[Target]:
        return [
            Target(
                "group >= 0.7 x raw pipelined confirms",
                "group.apply_async",
                "py-amqp pipelined confirms",
                threshold=0.7,
            ),
            Target(
                "submit_many >= 0.7 x raw pipelined confirms",
                "TaskQueue.submit_many",
                "py-amqp pipelined confirms",
                threshold=0.7,
            ),
        ]

    def _group(self) -> Sample:
        from celery import group

        with measure(self.clock, self.count) as sample:
            group(self.noop.s(i, -1, PAYLOAD) for i in range(self.count)).apply_async()
        self.env.purge(BRAIN_COMMANDS)
        return sample

    def _group_per_task(self) -> Sample:
        # A producer of the pool passed in: Celery's own path, one confirm wait per task,
        # as every group was published before the batch path.
        from celery import group

        with (
            measure(self.clock, self.count) as sample,
            self.app.producer_pool.acquire(block=True) as producer,
        ):
            group(self.noop.s(i, -1, PAYLOAD) for i in range(self.count)).apply_async(
                producer=producer
            )
        self.env.purge(BRAIN_COMMANDS)
        return sample

    def _submit_many(self) -> Sample:
        with measure(self.clock, self.count) as sample:
            self.taskqueue.submit_many([("bench_noop", PAYLOAD)] * self.count)
        self.env.purge(RESEARCH_TASKS)
        return sample

    def _raw(self) -> Sample:
        # Every publish in flight at once, then one wait for all the acks.
        channel = self.raw_channel
        acked: list[int] = []
        with measure(self.clock, self.count) as sample:
            channel.events["basic_ack"].add(lambda tag, multiple: acked.append(tag))
            for i in range(self.count):
                channel.basic_publish(
                    amqp.Message(body(i), delivery_mode=2, content_type="application/json"),
                    exchange=TASKS_EXCHANGE,
                    routing_key=BRAIN_COMMANDS,
                    mandatory=True,
                )
            self.raw_tags += self.count  # confirm tags count on across rounds
            while not acked or max(acked) < self.raw_tags:
                self.raw.drain_events(timeout=30)
        channel.events["basic_ack"].clear()
        self.env.purge(BRAIN_COMMANDS)
        return sample

    def teardown(self) -> None:
        for closer in (getattr(self, "raw", None), getattr(self, "taskqueue", None)):
            if closer is not None:
                try:
                    closer.close() if isinstance(closer, amqp.Connection) else closer.disconnect()
                except Exception as err:  # a failed teardown must not hide the trial's error
                    print(f"  teardown: {err}", file=sys.stderr)


class TaskDrain(Case):
    """20,000 pre-enqueued no-op tasks drained by the platform's worker vs Dramatiq's."""

    name = "task_drain"
    title = "task drain (2 processes, acks late, priority queue)"

    def setup(self, env: BenchEnv, *, quick: bool) -> None:
        from benchmarks import tasks_celery, tasks_dramatiq

        self.env = env
        self.full_count = 2000 if quick else 20000
        self.broker = broker_pid()
        self.celery_app = tasks_celery.app
        self.celery_app.conf.broker_url = env.url
        self.dramatiq_queue = tasks_dramatiq.QUEUE
        tasks_dramatiq.noop.send(-1, -1, PAYLOAD)  # declares Dramatiq's queues
        self.dramatiq_encode = lambda i: tasks_dramatiq.noop.message(i, self.count - 1, PAYLOAD)
        env.purge(BRAIN_COMMANDS, self.dramatiq_queue)

    def variants(self) -> list[Variant]:
        solo = (
            [Variant("celery 2 x solo", self._celery_solo, platform=True)]
            if os.environ.get(SOLO_ENV)
            else []
        )
        return [
            Variant("celery worker", self._celery, platform=True),
            Variant("celery threads 1 x 8", self._celery_threads, platform=True),
            Variant(RESEARCH_DEFAULTS, self._celery_research, platform=True),
            Variant(
                f"{RESEARCH_DEFAULTS[: RESEARCH_DEFAULTS.index(' (')]}, events off",
                self._celery_research_quiet,
                platform=True,
            ),
            *solo,
            Variant("Dramatiq, prefetch 1/process", self._dramatiq_prefetch1),
            Variant("Dramatiq, defaults", self._dramatiq),
        ]

    def targets(self) -> list[Target]:
        return [
            # Same guarantee as ours: one unacked message per process, so priorities hold.
            Target(
                "task drain >= Dramatiq (same prefetch)",
                "celery worker",
                "Dramatiq, prefetch 1/process",
            ),
            # Dramatiq out of the box: 8 threads and 16 unacked messages per process.
            Target("task drain >= Dramatiq (its defaults)", "celery worker", "Dramatiq, defaults"),
            # The research queue's defaults (`make run`, compose): one threads worker per core,
            # 8 threads and prefetch 8 each, with a lifecycle event per finished task
            # (KITTY_TASK_EVENTS, on by default).
            Target(
                "drain at research defaults >= 0.6 x Dramatiq (its defaults)",
                RESEARCH_DEFAULTS,
                "Dramatiq, defaults",
                threshold=0.6,
            ),
        ]

    @property
    def count(self) -> int:
        """Tasks per drain; the warm-up drains a tenth, to keep ``make bench`` short."""
        return self.full_count // 10 if self.warming else self.full_count

    def _celery_messages(self) -> list[tuple[amqp.Message, str, str]]:
        out = []
        for i in range(self.count):
            task_id = str(uuid.uuid4())
            # ignore_result as the task declares it (and its own apply_async sends it): the
            # worker reads the message's flag, and stored results were most of the drain.
            headers, properties, task_body, _ = self.celery_app.amqp.as_task_v2(
                task_id, "bench.noop", args=(i, self.count - 1, PAYLOAD), ignore_result=True
            )
            message = amqp.Message(
                json.dumps(task_body).encode(),
                content_type="application/json",
                content_encoding="utf-8",
                application_headers=headers,
                delivery_mode=2,
                priority=0,
                **{k: v for k, v in properties.items() if v is not None},
            )
            out.append((message, TASKS_EXCHANGE, BRAIN_COMMANDS))
        return out

    def _dramatiq_messages(self) -> list[tuple[amqp.Message, str, str]]:
        return [
            (
                amqp.Message(self.dramatiq_encode(i).encode(), delivery_mode=2),
                "",
                self.dramatiq_queue,
            )
            for i in range(self.count)
        ]

    def _fill(
        self, queue: str, messages: list[tuple[amqp.Message, str, str]], *, purge: bool = True
    ) -> None:
        # Unconfirmed for speed; we then wait until the queue holds every message (unless
        # workers already consume it).
        conn = self.env.amqp_connection()
        try:
            channel = conn.channel()
            if purge:
                channel.queue_purge(queue)
            for message, exchange, key in messages:
                channel.basic_publish(message, exchange=exchange, routing_key=key)
            deadline = time.monotonic() + 60
            while purge and channel.queue_declare(queue, passive=True).message_count < len(
                messages
            ):
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{queue} did not fill up to {len(messages)}")
                time.sleep(0.05)
        finally:
            conn.close()

    def _celery_command(self, *pool: str, loglevel: str = "WARNING") -> list[str]:
        # The Procfile's worker command with the bench task module.
        return [
            sys.executable, "-m", "celery", "-A", "benchmarks.tasks_celery", "worker",
            "-Q", BRAIN_COMMANDS, "-n", f"bench-{uuid.uuid4().hex[:6]}@%h",
            *pool, "--loglevel", loglevel,
        ]  # fmt: skip

    def _celery(self) -> Sample:
        self._fill(BRAIN_COMMANDS, self._celery_messages())
        return self._drain(self._celery_command("--pool", "prefork", "-c", str(DRAIN_PROCESSES)))

    def _celery_threads(self, env: dict[str, str] | None = None) -> Sample:
        # The research worker of the Procfile: one process, RESEARCH_THREADS threads, and a
        # prefetch of one message per thread (worker_prefetch_multiplier = 1).
        self._fill(BRAIN_COMMANDS, self._celery_messages())
        command = self._celery_command("--pool", "threads", "-c", str(RESEARCH_THREADS))
        return self._drain(command, env=env)

    def _celery_research(self, env: dict[str, str] | None = None, loglevel: str = "INFO") -> Sample:
        # The research defaults as `make run` starts them: RESEARCH_PROCESSES separate
        # threads workers, their task metrics in one multiprocess directory. Filled once all
        # consume, as for solo: one booting alone would drain on its own while the other starts.
        self.env.purge(BRAIN_COMMANDS)
        messages = self._celery_messages()
        samples = Path(tempfile.mkdtemp(prefix="metrics-", dir=self.env.workdir))
        env = {"PROMETHEUS_MULTIPROC_DIR": str(samples), **(env or {})}
        commands = [
            # At the Procfile's log level: what a task logs is part of its cost.
            self._celery_command(
                "--pool", "threads", "-c", str(RESEARCH_THREADS), loglevel=loglevel
            )
            for _ in range(RESEARCH_PROCESSES)
        ]
        try:
            return self._drain(
                *commands, env=env, ready=lambda: self._fill(BRAIN_COMMANDS, messages, purge=False)
            )
        finally:
            shutil.rmtree(samples, ignore_errors=True)

    def _celery_research_quiet(self) -> Sample:
        return self._celery_research(env={"KITTY_TASK_EVENTS": "false"})

    def _celery_solo(self) -> Sample:
        # DRAIN_PROCESSES single-process workers: each runs tasks in its consuming process.
        # Two separate workers boot separately: the queue is filled once both consume, or
        # the first would drain alone (on a core shared with the other's start-up).
        self.env.purge(BRAIN_COMMANDS)
        messages = self._celery_messages()
        commands = [
            self._celery_command("--pool", "solo", "-c", "1") for _ in range(DRAIN_PROCESSES)
        ]
        return self._drain(
            *commands, ready=lambda: self._fill(BRAIN_COMMANDS, messages, purge=False)
        )

    def _dramatiq(self, *extra: str, env: dict[str, str] | None = None) -> Sample:
        self._fill(self.dramatiq_queue, self._dramatiq_messages())
        command = [
            sys.executable, "-m", "dramatiq", "benchmarks.tasks_dramatiq",
            "--processes", str(DRAIN_PROCESSES), *extra,
        ]  # fmt: skip
        return self._drain(command, env=env)

    def _dramatiq_prefetch1(self) -> Sample:
        return self._dramatiq("--threads", "1", env={"dramatiq_queue_prefetch": "1"})

    def _drain(
        self,
        *commands: list[str],
        env: dict[str, str] | None = None,
        ready: Callable[[], None] | None = None,
    ) -> Sample:
        """Start ``commands`` (workers), time their drain from the first to the last task.

        With ``ready``, the workers start on an empty queue and ``ready`` fills it once every
        one of them consumes.
        """
        workdir = self.env.workdir
        marks.clear(workdir)
        procs: list[subprocess.Popen[Any]] = []
        try:
            for n, command in enumerate(commands):
                # A file, not a pipe: a chatty worker would block on a full pipe nobody reads.
                self.log = workdir / f"{command[2]}-{n}.log"
                with self.log.open("wb") as log:
                    procs.append(
                        subprocess.Popen(
                            command,
                            env={**self.env.subprocess_env(), **(env or {})},
                            stdout=log,
                            stderr=subprocess.STDOUT,
                        )
                    )
            clock = CpuClock(self.broker, helpers=tuple(p.pid for p in procs), include_self=False)
            if ready is not None:
                self._wait_consumers(BRAIN_COMMANDS, len(procs), procs)
                ready()
            start = self._wait_mark("first", procs)
            client0, broker0 = clock.read()
            end = self._wait_mark("last", procs)
            client1, broker1 = clock.read()
        finally:
            for proc in procs:
                _stop(proc)
        return Sample(
            messages=self.count,
            seconds=end - start,
            client_cpu=client1 - client0,
            broker_cpu=broker1 - broker0,
        )

    def _wait_consumers(self, queue: str, count: int, procs: list[subprocess.Popen[Any]]) -> None:
        conn = self.env.amqp_connection()
        try:
            channel = conn.channel()
            deadline = time.monotonic() + DRAIN_TIMEOUT
            while channel.queue_declare(queue, passive=True).consumer_count < count:
                for proc in procs:
                    if proc.poll() is not None:
                        raise RuntimeError(f"worker exited with {proc.returncode}")
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{queue} did not get {count} consumers")
                time.sleep(0.05)
        finally:
            conn.close()

    def _wait_mark(self, name: str, procs: list[subprocess.Popen[Any]]) -> float:
        deadline = time.monotonic() + DRAIN_TIMEOUT
        while (value := marks.read(self.env.workdir, name)) is None:
            for proc in procs:
                if proc.poll() is not None:
                    err = self.log.read_text(errors="replace")[-2000:]
                    raise RuntimeError(f"worker exited with {proc.returncode}: {err}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"no '{name}' mark within {DRAIN_TIMEOUT:g}s")
            time.sleep(0.002)
        return value


def _stop(proc: subprocess.Popen[Any]) -> None:
    """Warm shutdown, then kill; the process is ours, so only it and its children get signals."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
