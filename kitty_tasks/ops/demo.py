"""`make demo`: the KITT guide's three patterns, run against the platform of `make run`."""

from __future__ import annotations

import argparse
import contextlib
import logging
import sys
import threading
import time
import urllib.parse
import uuid
from collections.abc import Callable
from typing import Any

from kombu import Connection

from events import EventBus
from kitty_tasks.core.connection import vhost_of
from kitty_tasks.core.settings import get_settings
from kitty_tasks.core.topology import BRAIN_COMMANDS, CAD_TASKS, RESEARCH_TASKS, dlq_name
from kitty_tasks.runtime.application import app
from kitty_tasks.runtime.taskqueue import TaskQueue
from kitty_tasks.tasks.brain import brain_command
from kitty_tasks.tasks.cad import cad_generate
from kitty_tasks.tasks.research import research_paper
from rpc import RPCClient, RPCServer
from rpc.errors import RemoteError, ServiceUnavailable

__all__ = ["DemoError", "main"]

#: The guide's RPC service name; the demo serves it from a thread of its own.
RPC_SERVICE = "math.rpc"

Step = Callable[[str, float], list[str]]


class DemoError(RuntimeError):
    """A demo step could not show what it should; the message says what to check."""


def require_consumer(url: str, queue: str) -> None:
    """Fail fast, with the fix, when no worker consumes ``queue``."""

    # A passive declare answers from the queue itself; the management API's
    # consumer counts lag by its statistics interval.
    with Connection(url, connect_timeout=5) as connection:
        _, _, consumers = connection.channel().queue_declare(queue=queue, passive=True)
    if not consumers:
        raise DemoError(
            f"no worker consumes {queue!r} on vhost {vhost_of(url)!r}: "
            "start the platform with `make run` in another shell"
        )


def taskqueue_step(url: str, timeout: float) -> list[str]:
    """The guide's facade: ``TaskQueue.submit`` served by the running research worker."""

    require_consumer(url, RESEARCH_TASKS)
    with TaskQueue(url, RESEARCH_TASKS) as queue:
        task_id = queue.submit(
            task_type="research_paper",
            data={"query": "3D printing failure detection", "max_results": 3},
            priority=7,
            max_retries=3,
        )
        result = queue.result(task_id, timeout=timeout)
    titles = ", ".join(f"{r['title']!r} ({r['score']:.2f})" for r in result["results"]) or "none"
    return [
        f"submitted research_paper to {RESEARCH_TASKS} with priority 7: task {task_id}",
        f"research worker searched {result['searched']} documents; best: {titles}",
    ]


def celery_step(url: str, timeout: float) -> list[str]:
    """Celery's own idiom: ``delay`` and ``apply_async(priority=9)`` with their results."""

    app.conf.broker_url = url
    for queue in (RESEARCH_TASKS, CAD_TASKS, BRAIN_COMMANDS):
        require_consumer(url, queue)
    research = research_paper.delay(query="resin curing time", max_results=2)
    cad = cad_generate.apply_async(
        kwargs={
            "primitive": "cylinder",
            "radius": 12.5,
            "height": 30,
            "segments": 24,
            "name": "spool",
        },
        priority=9,
    )
    plan = brain_command.delay(
        command="plan_jobs",
        jobs=[
            {"id": "bracket", "hours": 3.5},
            {"id": "gear", "hours": 1.0},
            {"id": "case", "hours": 2.5},
        ],
        printers=[{"id": "bamboo_h2d"}, {"id": "prusa_mk4"}],
    )
    found = research.get(timeout=timeout)
    mesh = cad.get(timeout=timeout)
    schedule = plan.get(timeout=timeout)
    box = mesh["bounding_box"]
    top = found["results"][0]["title"] if found["results"] else None
    return [
        f"research_paper.delay -> {research.id}: {len(found['results'])} results, top {top!r}",
        f"cad_generate.apply_async(priority=9) -> {cad.id}: {mesh['facets']} facets, "
        f"{mesh['vertices']} vertices, box {box['min']} .. {box['max']}, "
        f"{len(mesh['stl'])} bytes of STL",
        f"brain_command.delay -> {plan.id}: plan {schedule['plan']}, "
        f"makespan {schedule['makespan_hours']} h",
    ]


def events_step(url: str, timeout: float) -> list[str]:
    """Pub/sub: a subscriber thread on ``fabrication.print.#`` gets two published events."""

    received: list[Any] = []
    both = threading.Event()

    def on_event(event: Any) -> None:
        received.append(event)
        if len(received) >= 2:
            both.set()

    # A source of its own per run, so its subscription queue holds nothing from earlier runs.
    subscriber = EventBus(url, source=f"demo-audit-{uuid.uuid4().hex[:6]}")
    subscriber.connect()
    subscription = subscriber.subscribe("fabrication.print.#", on_event)
    lines = [f"subscribed to fabrication.print.# on queue {subscription.queue}"]
    try:
        subscriber.start_consuming(block=False)
        with EventBus(url, source="fabrication-service") as publisher:
            started = publisher.publish(
                "fabrication.print.started",
                {
                    "job_id": "print_123",
                    "printer_id": "bamboo_h2d",
                    "material_id": "pla_black_esun",
                },
            )
            publisher.publish(
                "fabrication.print.completed",
                {"job_id": "print_123", "success": True, "duration_hours": 3.5},
            )
        lines.append(f"published fabrication.print.started ({started.event_id}) and .completed")
        if not both.wait(timeout):
            raise DemoError(
                f"the subscriber got {len(received)} of 2 events within {timeout:.0f} s"
            )
        lines.extend(
            f"subscriber got {e.event_type} from {e.source}: {dict(e.data)}" for e in received
        )
    finally:
        subscriber.stop(timeout=10)
        subscriber.disconnect()
        # The demo's own subscription would otherwise collect every later print event forever.
        lines.extend(_delete_queues(url, [subscription.queue, subscription.dead_letter_queue]))
    return lines


def _delete_queues(url: str, names: list[str]) -> list[str]:
    """Delete the demo's queues unless a consumer or a message still needs them; say which stay."""
    kept = []
    with Connection(url, connect_timeout=5) as connection:
        for name in names:
            # A channel per queue: a refused delete (in use, not empty) closes its channel.
            channel = connection.channel()
            try:
                channel.queue_delete(queue=name, if_unused=True, if_empty=True)
            except connection.channel_errors as err:
                kept.append(f"left queue {name!r} in place: {err}")
            finally:
                with contextlib.suppress(*connection.channel_errors):
                    channel.close()
    return kept


def rpc_step(url: str, timeout: float) -> list[str]:
    """Request/reply: an RPC server thread answers ``math.rpc``; errors come back typed."""

    def handle_add(request: dict[str, Any]) -> dict[str, Any]:
        return {"result": request["a"] + request["b"]}

    server = RPCServer(url, RPC_SERVICE)
    server.connect()
    server.register_handler(handle_add)
    serving = threading.Thread(target=server.start, name="demo-rpc", daemon=True)
    serving.start()
    client = RPCClient(url)
    client.connect()
    lines = []
    try:
        if not server.wait_ready(timeout):
            raise DemoError(f"the demo's {RPC_SERVICE} server did not start within {timeout} s")
        began = time.perf_counter()
        answer = client.call(RPC_SERVICE, {"a": 5, "b": 3}, timeout=timeout)
        took = (time.perf_counter() - began) * 1000
        lines.append(f"call {RPC_SERVICE} {{'a': 5, 'b': 3}} -> {answer} in {took:.1f} ms")
        # The server logs a failing handler's traceback; here the failure is the point.
        server_log = logging.getLogger("rpc")
        level = server_log.level
        server_log.setLevel(logging.CRITICAL)
        try:
            client.call(RPC_SERVICE, {"a": 5}, timeout=timeout)
        except RemoteError as err:
            lines.append(f"call {RPC_SERVICE} {{'a': 5}} -> RemoteError {err.type}: {err.message}")
        finally:
            server_log.setLevel(level)
        try:
            client.call("nobody.rpc", {}, timeout=timeout)
        except ServiceUnavailable as err:
            lines.append(f"call nobody.rpc -> {type(err).__name__} at once: {err}")
    finally:
        client.disconnect()
        server.stop()
        serving.join(timeout=10)
        # Else the durable math.rpc queue stays without a server, and later calls to it
        # would find it (a real math.rpc service keeps its queue: it is in use).
        lines.extend(_delete_queues(url, [RPC_SERVICE, dlq_name(RPC_SERVICE)]))
    return lines


STEPS: tuple[tuple[str, Step], ...] = (
    ("Task queue (the guide's TaskQueue facade)", taskqueue_step),
    ("Task queue (Celery: delay / apply_async)", celery_step),
    ("Event bus (publish / subscribe)", events_step),
    ("RPC (request / reply over direct reply-to)", rpc_step),
)


def main(argv: list[str] | None = None) -> int:
    """Run every step, print what happened; exit 1 if any step failed."""
    parser = argparse.ArgumentParser(prog="kitty-demo", description=__doc__)
    parser.add_argument("--url", default=None, help="AMQP URL (default: RABBITMQ_URL)")
    parser.add_argument("--timeout", type=float, default=30.0, help="seconds to wait per answer")
    args = parser.parse_args(argv)
    url = args.url or get_settings().rabbitmq_url
    safe_url = urllib.parse.urlsplit(url)._replace(
        netloc=urllib.parse.urlsplit(url).netloc.rpartition("@")[2]
    )
    print(f"kitty_tasks demo against {urllib.parse.urlunsplit(safe_url)}\n", flush=True)
    failures = 0
    for number, (title, step) in enumerate(STEPS, start=1):
        print(f"{number}. {title}", flush=True)
        began = time.perf_counter()
        try:
            lines = step(url, args.timeout)
        except Exception as err:  # one failed step must not hide the others
            failures += 1
            print(f"   FAILED: {type(err).__name__}: {err}\n", flush=True)
            continue
        for line in lines:
            print(f"   {line}")
        print(f"   ok ({time.perf_counter() - began:.2f} s)\n", flush=True)
    if failures:
        print(f"{failures} of {len(STEPS)} steps failed", file=sys.stderr)
        return 1
    print(f"all {len(STEPS)} patterns worked")
    return 0


if __name__ == "__main__":
    sys.exit(main())
