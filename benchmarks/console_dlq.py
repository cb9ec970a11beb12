"""How long the console takes to render a DLQ page of 10,000 dead letters (issue 13).

    .venv/bin/python -m benchmarks.console_dlq [--letters 10000] [--rounds 3]

Fills research.tasks.dlq of a fresh vhost (benchmarks/env.py) with dead letters of three
error types and two tasks, then starts `kitty-tasks console` with the default scan limit and
with one that reads the whole queue, and times GET /dlq/research.tasks.dlq (median of the
rounds; the first request is a warm-up). Prints one line per setting; nothing is asserted.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import amqp
import requests

from benchmarks.env import BenchEnv, bench_env

DLQ = "research.tasks.dlq"
ERRORS = ("ValueError", "TimeoutError", "KeyError")
TASKS = ("research.paper", "research.fragile")
LOGIN = ("bench", "bench-console-password")
KITTY_TASKS = str(Path(sys.executable).with_name("kitty-tasks"))


def fill(env: BenchEnv, count: int) -> None:
    """Publish ``count`` dead letters through dlx as the platform's failures look; wait for all."""
    body = b'[["a query of about the usual size for a research task"], {"max_results": 10}, {}]'
    conn = env.amqp_connection()
    try:
        channel = conn.channel()
        for item in range(count):
            headers = {
                "task": TASKS[item % len(TASKS)], "id": f"bench-{item}",
                "x-kitty-error-type": ERRORS[item % len(ERRORS)],
                "x-kitty-error-message": f"failure number {item}",
                "x-kitty-traceback": "Traceback (most recent call last):\n  ...\n" * 20,
                "x-kitty-attempts": 4, "x-kitty-first-failure": "2026-11-30T10:00:00+00:00",
                "x-kitty-last-failure": f"2026-11-30T10:{item % 60:02d}:00+00:00",
            }  # fmt: skip
            message = amqp.Message(body, content_type="application/json",
                                   application_headers=headers, delivery_mode=2)  # fmt: skip
            channel.basic_publish(message, exchange="dlx", routing_key="research.tasks")
        channel.close()
    finally:
        conn.close()
    deadline = time.monotonic() + 60
    while env.depth(DLQ) < count:
        if time.monotonic() > deadline:
            raise SystemExit(f"only {env.depth(DLQ)} of {count} dead letters arrived")
        time.sleep(0.2)


def time_page(env: BenchEnv, scan_limit: int, rounds: int) -> tuple[float, int]:
    """Median seconds of GET on the DLQ's page, and the page's size in bytes."""
    port = 18765
    console_env = {**env.subprocess_env(), "KITTY_CONSOLE_USER": LOGIN[0],
                   "KITTY_CONSOLE_PASSWORD": LOGIN[1]}  # fmt: skip
    process = subprocess.Popen(
        [KITTY_TASKS, "--url", env.url, "--management-url", env.management.base_url, "console",
         "--port", str(port), "--scan-limit", str(scan_limit)],
        env=console_env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}/dlq/{DLQ}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                requests.get(url, timeout=2)
                break
            except requests.ConnectionError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        timings, size = [], 0
        for round_ in range(rounds + 1):
            started = time.perf_counter()
            answer = requests.get(url, auth=LOGIN, timeout=120)
            elapsed = time.perf_counter() - started
            answer.raise_for_status()
            size = len(answer.content)
            if round_:  # the first is a warm-up
                timings.append(elapsed)
        return statistics.median(timings), size
    finally:
        process.terminate()
        process.wait(10)


def main() -> None:
    """Fill a DLQ, time its page with the default and the full scan, print the figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--letters", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    if args.letters < 1 or args.rounds < 1:
        parser.error("--letters and --rounds must be at least 1")
    os.environ.setdefault("PYTHONPATH", str(Path(__file__).parent.parent))
    with bench_env() as env:
        started = time.perf_counter()
        fill(env, args.letters)
        print(
            f"filled {DLQ} with {args.letters} dead letters "
            f"in {time.perf_counter() - started:.1f} s"
        )
        for scan_limit in (1000, args.letters):
            seconds, size = time_page(env, scan_limit, args.rounds)
            print(f"scan limit {scan_limit:>6}: page in {seconds:.2f} s (median of {args.rounds}), "
                  f"{size / 1024:.0f} KiB of HTML")  # fmt: skip
        assert env.depth(DLQ) == args.letters, "the page moved dead letters"


if __name__ == "__main__":
    main()
