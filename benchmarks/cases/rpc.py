"""RPC cases: latency with one call in flight, and throughput with sixteen, against raw pika."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
import uuid
from concurrent.futures import Future
from typing import Any

import pika

from benchmarks.cases.tasks import _stop
from benchmarks.cpu import CpuClock, broker_pid
from benchmarks.env import BenchEnv
from benchmarks.harness import Case, Sample, Target, Variant, measure
from benchmarks.payload import PAYLOAD, body
from benchmarks.rpc_servers import PLATFORM_SERVICE, RAW_QUEUE

__all__ = ["RPCLatency", "RPCThroughput"]

#: Calls in flight in the throughput case.
IN_FLIGHT = 16
#: Seconds a server may take to say it is ready.
READY_TIMEOUT = 30.0


class _RawClient:
    """A raw pika direct reply-to loop: publish, wait for the reply, repeat."""

    def __init__(self, url: str) -> None:
        self.connection = pika.BlockingConnection(pika.URLParameters(url))
        self.channel = self.connection.channel()
        self.reply: bytes | None = None
        self.channel.basic_consume("amq.rabbitmq.reply-to", self._on_reply, auto_ack=True)

    def _on_reply(self, ch: Any, method: Any, props: Any, reply: bytes) -> None:
        self.reply = reply

    def call(self, payload: bytes) -> bytes:
        """One round trip."""
        self.reply = None
        self.channel.basic_publish(
            "",
            RAW_QUEUE,
            payload,
            pika.BasicProperties(reply_to="amq.rabbitmq.reply-to", correlation_id=uuid.uuid4().hex),
        )
        while self.reply is None:
            self.connection.process_data_events(time_limit=None)
        return self.reply

    def close(self) -> None:
        """Close the connection."""
        self.connection.close()


class _RPCCase(Case):
    """Starts both echo servers as subprocesses and connects both clients."""

    def setup(self, env: BenchEnv, *, quick: bool) -> None:
        from rpc import RPCClient

        self.env = env
        self.quick = quick
        self.servers: dict[str, subprocess.Popen[Any]] = {}
        for kind in ("platform", "raw"):
            self.servers[kind] = _start_server(env, kind)
        broker = broker_pid()
        self.platform_clock = CpuClock(broker, helpers=(self.servers["platform"].pid,))
        self.raw_clock = CpuClock(broker, helpers=(self.servers["raw"].pid,))
        self.client = RPCClient(env.url)
        self.client.connect()
        self.raw = _RawClient(env.url)
        self.body = body(0)

    def teardown(self) -> None:
        for closer in (getattr(self, "client", None), getattr(self, "raw", None)):
            if closer is not None:
                try:
                    closer.close()
                except Exception as err:  # a failed teardown must not hide the trial's error
                    print(f"  teardown: {err}", file=sys.stderr)
        for proc in getattr(self, "servers", {}).values():
            _stop(proc)


class RPCLatency(_RPCCase):
    """``RPCClient.call`` p50/p99 vs a raw pika direct reply-to loop, one call in flight."""

    name = "rpc_latency"
    title = "RPC latency, 1 in flight"

    def setup(self, env: BenchEnv, *, quick: bool) -> None:
        super().setup(env, quick=quick)
        self.count = 500 if quick else 2000

    def variants(self) -> list[Variant]:
        return [
            Variant("RPCClient.call", self._platform, platform=True),
            Variant("pika reply-to loop", self._raw),
        ]

    def targets(self) -> list[Target]:
        return [
            Target(
                "RPC p50 <= 1.3 x raw", "RPCClient.call", "pika reply-to loop", "p50", "<=", 1.3
            ),
            Target("RPC p99 <= 2 x raw", "RPCClient.call", "pika reply-to loop", "p99", "<=", 2.0),
        ]

    def _platform(self) -> Sample:
        call = self.client.call
        with measure(self.platform_clock, self.count) as sample:
            for _ in range(self.count):
                t0 = time.perf_counter()
                call(PLATFORM_SERVICE, PAYLOAD, timeout=10)
                sample.latencies.append(time.perf_counter() - t0)
        return sample

    def _raw(self) -> Sample:
        call = self.raw.call
        with measure(self.raw_clock, self.count) as sample:
            for _ in range(self.count):
                t0 = time.perf_counter()
                call(self.body)
                sample.latencies.append(time.perf_counter() - t0)
        return sample


class RPCThroughput(_RPCCase):
    """``RPCClient.call_async`` with 16 calls in flight vs the raw loop, sequential."""

    name = "rpc_throughput"
    title = f"RPC throughput, {IN_FLIGHT} in flight"

    def setup(self, env: BenchEnv, *, quick: bool) -> None:
        super().setup(env, quick=quick)
        self.count = 1000 if quick else 4000

    def variants(self) -> list[Variant]:
        return [
            Variant(f"call_async x{IN_FLIGHT}", self._platform, platform=True),
            Variant("pika reply-to loop", self._raw),
        ]

    def targets(self) -> list[Target]:
        return [
            Target(
                f"RPC {IN_FLIGHT} in flight >= 3 x raw sequential",
                f"call_async x{IN_FLIGHT}",
                "pika reply-to loop",
                threshold=3.0,
            )
        ]

    def _platform(self) -> Sample:
        window = threading.Semaphore(IN_FLIGHT)
        done = threading.Event()
        remaining = [self.count]
        lock = threading.Lock()
        errors: list[BaseException] = []

        def finished(future: Future[Any]) -> None:
            if future.exception() is not None:
                errors.append(future.exception())  # type: ignore[arg-type]
            window.release()
            with lock:
                remaining[0] -= 1
                if remaining[0] == 0:
                    done.set()

        with measure(self.platform_clock, self.count) as sample:
            for _ in range(self.count):
                window.acquire()
                self.client.call_async(PLATFORM_SERVICE, PAYLOAD, timeout=30).add_done_callback(
                    finished
                )
            if not done.wait(60):
                raise TimeoutError(f"{remaining[0]} calls still in flight after 60 s")
        if errors:
            raise RuntimeError(f"{len(errors)} calls failed, first: {errors[0]!r}")
        return sample

    def _raw(self) -> Sample:
        call = self.raw.call
        with measure(self.raw_clock, self.count) as sample:
            for _ in range(self.count):
                call(self.body)
        return sample


def _start_server(env: BenchEnv, kind: str) -> subprocess.Popen[Any]:
    """Start an echo server and wait until it consumes."""
    log = (env.workdir / f"rpc-{kind}.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "benchmarks.rpc_servers", kind],
        env=env.subprocess_env(),
        stdout=subprocess.PIPE,
        stderr=log,
    )
    deadline = time.monotonic() + READY_TIMEOUT
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if b"ready" not in line or time.monotonic() > deadline:
        _stop(proc)
        raise RuntimeError(f"the {kind} RPC server did not start; see {log.name}")
    # "ready" is printed before consuming starts; give the consumer a moment to register.
    time.sleep(0.5)
    return proc
