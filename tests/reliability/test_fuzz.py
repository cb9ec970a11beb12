"""Scenario 8: hypothesis fuzzing of task, event and RPC consumers with JSON and raw bytes."""

from __future__ import annotations

import json
import threading
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import amqp
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from kombu import Connection

from events import EventBus
from kitty_tasks.core.topology import (
    EVENTS_EXCHANGE,
    RESEARCH_TASKS,
    RPC_EXCHANGE,
    TASKS_EXCHANGE,
    dlq_name,
)
from rpc import RPCServer
from rpc.protocol import decode_request, encode_result
from tests.reliability.helpers import WorkerProcess, queue_counts, read_ids
from tests.reliability.node import wait_for
from tests.reliability.workerapp import RECORD_TASK

EXAMPLES = 120
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)


def _containers(inner: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """Lists and objects of ``inner``."""
    return st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=10), inner, max_size=5)


def _json_bytes(doc: Any) -> bytes:
    """``doc`` as JSON bytes (NaN and infinities included, as Python writes them)."""
    return json.dumps(doc).encode()


def _not_sleep(key: str) -> bool:
    """Keeps the fuzzed task kwargs away from the ``sleep`` argument."""
    return key != "sleep"


# `st.uuids()` builds its random source (`st.randoms`) lazily, importing a Hypothesis module on the
# first draw; that import parses source with `ast` while Hypothesis has raised the recursion
# limit, where CPython 3.11.7 can raise "SystemError: AST constructor recursion depth mismatch"
# (a FlakyFailure unrelated to the platform). Building it here, at import, avoids that.
st.randoms(use_true_random=True).validate()

JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    _containers,
    max_leaves=30,
)
#: A body: a JSON document (NaN and infinities included), or bytes of any kind.
BODIES = st.one_of(JSON.map(_json_bytes), st.binary(max_size=512))
#: Event bodies: anything, or an envelope with fuzzed fields (some valid, most not).
EVENT_BODIES = st.one_of(
    BODIES,
    st.fixed_dictionaries(
        {
            "event_id": st.uuids().map(str) | st.text(max_size=8),
            "event_type": st.sampled_from(["reliability.fuzz.tick", "Not A Type", ""]),
            "version": st.integers(min_value=-2, max_value=3) | st.text(max_size=3),
            "timestamp": st.sampled_from(["2026-01-01T00:00:00+00:00", "yesterday", 0]),
            "source": st.text(max_size=10),
            "data": JSON,
        }
    ).map(_json_bytes),
    # a valid envelope around fuzzed data: the handler must get these
    st.fixed_dictionaries(
        {
            "event_id": st.uuids().map(str),
            "event_type": st.just("reliability.fuzz.tick"),
            "version": st.just(1),
            "timestamp": st.just("2026-01-01T00:00:00+00:00"),
            "source": st.just("fuzz-service"),
            "data": st.dictionaries(st.text(max_size=10), JSON, max_size=4),
        }
    ).map(_json_bytes),
)
#: Task bodies of Celery's shape [args, kwargs, embed] with fuzzed contents ("sleep" left out:
#: a fuzzed sleep of 1e300 seconds would test patience, not the platform).
TASK_BODIES = st.one_of(
    BODIES,
    st.tuples(
        st.lists(JSON, max_size=1),
        st.dictionaries(st.text(max_size=5).filter(_not_sleep), JSON, max_size=2),
        st.none() | st.just({}),
    ).map(_json_bytes),
)


def publish_fuzz(
    url: str,
    route: Callable[[bytes, str], tuple[str, str, dict[str, Any]]],
    bodies: st.SearchStrategy[bytes] = BODIES,
) -> list[str]:
    """Publish EXAMPLES hypothesis ``bodies``; ``route(body, id)`` -> (exchange, key, props)."""
    ids: list[str] = []
    with Connection(url) as conn:
        channel = conn.channel()
        channel.confirm_select()

        @FUZZ
        @given(body=bodies)
        def publish_one(body: bytes) -> None:
            message_id = uuid.uuid4().hex
            exchange, key, properties = route(body, message_id)
            channel.basic_publish_confirm(
                amqp.Message(body, message_id=message_id, delivery_mode=2, **properties),
                exchange,
                key,
            )
            ids.append(message_id)

        publish_one()
        channel.close()
    return ids


def queued_ids(url: str, queue: str, key: Callable[[amqp.Message], str | None]) -> list[str]:
    """Take every message from ``queue``; return ``key(message)`` of each."""
    found: list[str] = []
    with Connection(url) as conn:
        channel = conn.channel()
        while (message := channel.basic_get(queue, no_ack=True)) is not None:
            found.append(str(key(message)))
        channel.close()
    return found


def dead_letter_id(message: amqp.Message) -> str | None:
    """The fuzz id of a dead letter: message_id, or the task id a republished task carries."""
    headers = message.properties.get("application_headers") or {}
    return message.properties.get("message_id") or headers.get("id")


def test_fuzzed_task_messages_are_handled_or_dead_lettered(node_url: str, tmp_path: Path) -> None:
    """Guarantee: any body into a task queue is run or dead-lettered; the worker never dies."""
    # Given a worker on research.tasks
    # (no retries: a failing fuzzed task goes straight to the DLQ instead of the ladder)
    worker = WorkerProcess(node_url, tmp_path / "worker", env={"KITTY_MAX_RETRIES": "0"}).start()

    def route(_body: bytes, message_id: str) -> tuple[str, str, dict[str, Any]]:
        headers = {"lang": "py", "task": RECORD_TASK, "id": message_id, "root_id": message_id}
        props = {"content_type": "application/json", "application_headers": headers}
        return TASKS_EXCHANGE, RESEARCH_TASKS, props

    # When hypothesis bodies are published as record tasks
    ids = publish_fuzz(node_url, route, TASK_BODIES)
    dlq = dlq_name(RESEARCH_TASKS)

    def settled() -> bool:
        ran = set(read_ids(worker.record_dir, "runs"))
        return queue_counts(node_url, RESEARCH_TASKS)[0] == 0 and (
            len(ran) + queue_counts(node_url, dlq)[0] >= len(ids)
        )

    try:
        wait_for(settled, timeout=120, what="every fuzzed task handled or dead-lettered")
    except TimeoutError as err:
        state = (queue_counts(node_url, RESEARCH_TASKS), queue_counts(node_url, dlq))
        ran_now = set(read_ids(worker.record_dir, "runs"))
        missing = set(ids) - ran_now - set(queued_ids(node_url, dlq, dead_letter_id))
        log = worker.log_path.read_text()
        about = [line for line in log.splitlines() if any(m in line for m in missing)]
        raise AssertionError(
            f"{err}: sent={len(ids)} ran={len(ran_now)} (queue, dlq)={state} "
            f"missing={sorted(missing)}\n" + "\n".join(about[-30:])
        ) from err
    # Then every id is accounted for exactly once: ran, or in the DLQ
    ran = set(read_ids(worker.record_dir, "runs"))
    dead = queued_ids(node_url, dlq, dead_letter_id)
    alive = worker.alive
    worker.stop()
    print(f"task fuzz: sent={len(ids)} ran={len(ran)} dead-lettered={len(dead)}")
    assert sorted([*ran, *dead]) == sorted(ids)
    assert alive


def test_fuzzed_events_are_handled_or_dead_lettered(node_url: str) -> None:
    """Guarantee: any body into an event subscriber is handled or dead-lettered; none loops."""
    # Given an EventBus subscriber counting what it handles
    handled: list[str] = []
    lock = threading.Lock()
    queue = "reliability.fuzz.events"

    def on_event(event: Any) -> None:
        with lock:
            handled.append(event.event_id)

    with EventBus(node_url, source="reliability") as bus:
        bus.subscribe("reliability.fuzz.#", on_event, queue=queue)
        bus.start_consuming(block=False)
        assert bus.wait_until_consuming(30)
        # When hypothesis bodies are published as events
        ids = publish_fuzz(
            node_url,
            lambda _b, _i: (
                EVENTS_EXCHANGE,
                "reliability.fuzz.x",
                {"content_type": "application/json"},
            ),
            EVENT_BODIES,
        )
        # Then each is handled or lands in the DLQ, and the queue drains
        wait_for(
            lambda: (
                queue_counts(node_url, queue)[0] == 0
                and len(handled) + queue_counts(node_url, dlq_name(queue))[0] >= len(ids)
            ),
            timeout=120,
            what="every fuzzed event settled",
        )
        alive = bus.wait_until_consuming(5)
        bus.stop()
    dead = queued_ids(node_url, dlq_name(queue), dead_letter_id)
    print(f"event fuzz: sent={len(ids)} handled={len(handled)} dead-lettered={len(dead)}")
    assert len(handled) + len(dead) == len(ids)
    assert set(dead) <= set(ids)
    assert alive


def test_fuzzed_rpc_requests_are_answered_or_dead_lettered(node_url: str) -> None:
    """Guarantee: any request body gets an error reply (or, without reply_to, the DLQ)."""
    # Given an RPC server echoing its payload, and a reply queue of ours
    service = "reliability.fuzz.rpc"
    server = RPCServer(node_url, service)
    server.register_handler(lambda payload: payload)
    server.connect()
    threading.Thread(target=server.start, daemon=True).start()
    assert server.wait_ready(30)
    with Connection(node_url) as conn:
        channel = conn.channel()
        reply_queue, _, _ = channel.queue_declare("reliability.fuzz.replies", durable=True)
        channel.close()
    with_reply: set[str] = set()
    bodies: dict[str, bytes] = {}

    def route(body: bytes, message_id: str) -> tuple[str, str, dict[str, Any]]:
        props: dict[str, Any] = {"content_type": "application/json", "correlation_id": message_id}
        bodies[message_id] = body
        if len(body) % 2 == 0:  # half with a reply address, half without
            props["reply_to"] = reply_queue
            with_reply.add(message_id)
        return RPC_EXCHANGE, service, props

    def fails(body: bytes) -> bool:
        """The oracle: would the echo server fail this request (so dead-letter it)?"""
        try:
            encode_result(decode_request(body), max_bytes=1 << 20)
        except Exception:
            return True
        return False

    # When hypothesis bodies are sent as requests
    ids = publish_fuzz(node_url, route)
    # Then each request with reply_to is answered; without one, a failing request is
    # dead-lettered and a good one is handled (an echo without a reply leaves no trace)
    must_die = {i for i in ids if i not in with_reply and fails(bodies[i])}
    try:
        wait_for(
            lambda: (
                queue_counts(node_url, reply_queue)[0] >= len(with_reply)
                and queue_counts(node_url, dlq_name(service))[0] >= len(must_die)
                and queue_counts(node_url, service)[0] == 0
            ),
            timeout=60,
            what="every fuzzed request settled",
        )
    except TimeoutError as err:
        raise AssertionError(
            f"{err}: with reply_to {len(with_reply)}, replies "
            f"{queue_counts(node_url, reply_queue)[0]}; failing without reply_to "
            f"{len(must_die)}, dead-lettered {queue_counts(node_url, dlq_name(service))[0]}"
        ) from err
    replies = queued_ids(node_url, reply_queue, lambda m: m.properties.get("correlation_id"))
    dead = queued_ids(node_url, dlq_name(service), lambda m: m.properties.get("correlation_id"))
    alive = server.running
    server.stop()
    errors = sum(1 for i in with_reply if fails(bodies[i]))
    print(
        f"rpc fuzz: sent={len(ids)} replied={len(replies)} (errors {errors}) "
        f"dead-lettered={len(dead)} handled-without-reply={len(ids) - len(replies) - len(dead)}"
    )
    assert sorted(replies) == sorted(with_reply)
    assert sorted(dead) == sorted(must_die)
    assert alive
