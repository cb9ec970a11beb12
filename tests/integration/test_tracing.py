"""Distributed tracing on the real broker: one request through a task, an event and RPC.

The test process traces into OpenTelemetry's in-memory exporter; the Celery worker and
the RPC server, real subprocesses, export over OTLP/HTTP (configured by the standard
``OTEL_*`` variables only) to a small receiver the test runs.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from events import Event, EventBus
from kitty_tasks.core import tracing
from kitty_tasks.core.topology import CAD_TASKS, FABRICATION_EVENTS, RESEARCH_TASKS, dlq_name
from rpc import RPCClient, RPCServer
from tests.helpers import KITTY_TASKS, ROOT, CeleryWorker, queue_counts, wait_for
from tests.integration import tasks_for_tests
from tests.integration.events_helpers import consuming, drain_until, purge, unique
from tests.integration.otlp_receiver import OTLPReceiver, ReceivedSpan
from tests.integration.rpc_support import service_name, serving

pytestmark = [pytest.mark.rabbitmq, pytest.mark.slow]

TEST_TASKS = "tests.integration.tasks_for_tests"
#: Set, the main test writes the demo trace's spans there (scripts/trace_timeline.py draws
#: docs/tracing.md's picture from them).
TIMELINE_OUT = "KITTY_TRACE_TIMELINE_OUT"


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    """Tracing on in this process, into an in-memory exporter; off again afterwards."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracing.enable(provider, METERS)
    PROVIDER[:] = [provider]
    yield exporter
    tracing.reset()


#: The metrics of the test process, read by the main test.
READER = InMemoryMetricReader()
METERS = MeterProvider(metric_readers=[READER])
#: The provider the ``spans`` fixture installed, for the test's own "brain request" span.
PROVIDER: list[TracerProvider] = []


@pytest.fixture(scope="module")
def receiver() -> Iterator[OTLPReceiver]:
    """The OTLP/HTTP receiver the subprocesses export to."""
    with OTLPReceiver() as otlp:
        yield otlp


@pytest.fixture(scope="module")
def worker(amqp_url: str, receiver: OTLPReceiver) -> Iterator[CeleryWorker]:
    """A prefork worker on research.tasks whose child traces to the receiver."""
    for queue in (RESEARCH_TASKS, dlq_name(RESEARCH_TASKS)):
        purge(amqp_url, queue)
    env = {**receiver.env("research-worker"), "KITTY_RETRY_BACKOFF_BASE": "0.1"}
    with CeleryWorker(amqp_url, [RESEARCH_TASKS], include=[TEST_TASKS], env=env) as w:
        yield w
    purge(amqp_url, dlq_name(RESEARCH_TASKS))


@pytest.fixture
def rpc_server(amqp_url: str, receiver: OTLPReceiver) -> Iterator[str]:
    """An RPC server process serving ``lookup``; yields its service name."""
    service = service_name("papers")
    env = {**os.environ, "RABBITMQ_URL": amqp_url, **receiver.env("paper-index")}
    server = subprocess.Popen(
        [sys.executable, "-m", "tests.integration.traced_rpc_server", service],
        cwd=ROOT,
        env=env,
    )

    def consumed() -> bool:
        try:
            return queue_counts(amqp_url, service)[1] > 0
        except Exception:  # not declared yet
            return False

    try:
        wait_for(consumed, 30, 0.1, "the RPC server to consume")
        yield service
    finally:
        server.terminate()
        server.wait(30)


def by_name(finished: tuple[ReadableSpan, ...], name: str) -> ReadableSpan:
    """The one finished in-memory span named ``name``."""
    matching = [s for s in finished if s.name == name]
    assert len(matching) == 1, [s.name for s in finished]
    [span] = matching
    return span


def hex_ids(span: ReadableSpan) -> tuple[str, str]:
    """(trace id, span id) of an in-memory span, in hex as OTLP has them."""
    context = span.get_span_context()
    assert context is not None
    return f"{context.trace_id:032x}", f"{context.span_id:016x}"


def test_one_request_is_traced_through_a_retried_task_an_event_and_an_rpc_call(  # noqa: PLR0917
    spans: InMemorySpanExporter,
    worker: CeleryWorker,
    receiver: OTLPReceiver,
    rpc_server: str,
    amqp_url: str,
    tmp_path: Path,
) -> None:
    # Given a subscriber to research.task.completed whose handler calls the paper index
    answers: list[Any] = []
    called = threading.Event()
    client = RPCClient(amqp_url)
    client.connect()

    def on_completed(event: Event) -> None:
        answers.append(client.call(rpc_server, {"task_id": event.data["task_id"]}, method="lookup"))
        called.set()

    bus = EventBus(amqp_url, source=unique("citations"))
    bus.connect()
    subscription = bus.subscribe("research.task.completed", on_completed)
    tracer = spans_tracer()
    with consuming(bus):
        # When a brain request enqueues a research task that fails once, then succeeds
        with tracer.start_as_current_span("brain request") as request:
            result = tasks_for_tests.flaky.delay(str(tmp_path / "runs"), 1)
        assert called.wait(60), worker.output()
    client.disconnect()
    assert answers == [{"paper": result.id, "cited": 3}]
    trace_id = f"{request.get_span_context().trace_id:032x}"

    # Then the client's enqueue is a PRODUCER child of the request, with the conventions' names
    finished = spans.get_finished_spans()
    # (Celery sends a task for a direct exchange's queue through the default exchange.)
    enqueue = by_name(finished, f"send amq.default:{RESEARCH_TASKS}")
    assert enqueue.kind is SpanKind.PRODUCER
    assert enqueue.parent is not None
    assert enqueue.parent.span_id == request.get_span_context().span_id
    assert dict(enqueue.attributes or {}) == {
        "messaging.system": "rabbitmq",
        "messaging.operation.type": "send",
        "messaging.operation.name": "send",
        "messaging.destination.name": f"amq.default:{RESEARCH_TASKS}",
        "messaging.rabbitmq.destination.routing_key": RESEARCH_TASKS,
        "messaging.message.id": result.id,
        "messaging.message.conversation_id": result.id,
    }
    enqueue_ids = hex_ids(enqueue)

    # And the worker's first attempt is a child of it, failed, and says it was retried
    first = receiver.find("the first attempt", service="research-worker", parent_id=enqueue_ids[1])
    assert first.name == f"process amq.default:{RESEARCH_TASKS}:{RESEARCH_TASKS}"
    assert first.kind == "CONSUMER"
    assert first.trace_id == trace_id
    assert first.error
    assert first.attributes["error.type"] == "ConnectionError"
    assert first.attributes["kitty.attempt"] == 1
    assert first.attributes["kitty.outcome"] == "retried"
    assert first.attributes["messaging.operation.type"] == "process"
    assert first.attributes["messaging.message.id"] == result.id
    # And its retry copy went to the ladder in a send span of its own
    retry = receiver.find("the retry's send", parent_id=first.span_id, kind="PRODUCER")
    assert retry.name.startswith("send kitty.delay.")
    assert retry.name.endswith(f":{RESEARCH_TASKS}")
    # And the second attempt, back from the ladder, is its child
    second = receiver.find("the second attempt", parent_id=retry.span_id)
    assert second.name == f"process amq.default:{RESEARCH_TASKS}:{RESEARCH_TASKS}"
    assert second.trace_id == trace_id
    assert second.attributes["kitty.attempt"] == 2
    assert not second.error
    # And the completed event it published is a send span under the second attempt
    published = receiver.find(
        "the event's send",
        parent_id=second.span_id,
        name="send kitty.events:research.task.completed",
    )
    assert published.attributes["messaging.destination.name"] == (
        "kitty.events:research.task.completed"
    )

    # And the subscriber's handling is a trace of its own that links to that send
    handled = by_name(
        finished, f"process kitty.events:research.task.completed:{subscription.queue}"
    )
    assert handled.kind is SpanKind.CONSUMER
    assert handled.parent is None
    assert [hex_ids_of_link(link) for link in handled.links] == [
        (published.trace_id, published.span_id)
    ]
    assert handled.attributes is not None
    assert (
        handled.attributes["messaging.message.id"] == published.attributes["messaging.message.id"]
    )
    assert handled.attributes["kitty.attempt"] == 1
    # And the handler's RPC call is a CLIENT child of the handling
    call = by_name(finished, f"send kitty.rpc:{rpc_server}")
    assert call.kind is SpanKind.CLIENT
    assert call.parent is not None
    assert call.parent.span_id == handled.get_span_context().span_id
    assert call.attributes is not None
    conversation = call.attributes["messaging.message.conversation_id"]
    # And the server's work, in another process, is a child of the call, and replies under it
    call_trace, call_span = hex_ids(call)
    served = receiver.find("the server's span", service="paper-index", parent_id=call_span)
    assert served.name == f"process kitty.rpc:{rpc_server}:{rpc_server}"
    assert served.trace_id == call_trace
    assert served.attributes["messaging.message.conversation_id"] == conversation
    reply = receiver.find("the reply's send", parent_id=served.span_id)
    assert reply.name == "send amq.default:amq.rabbitmq.reply-to"
    assert reply.attributes["messaging.destination.temporary"] is True

    # And the conventions' metrics were recorded beside the spans
    names = {
        metric.name
        for resource in READER.get_metrics_data().resource_metrics
        for scope in resource.scope_metrics
        for metric in scope.metrics
    }
    assert {
        "messaging.client.operation.duration",
        "messaging.client.sent.messages",
        "messaging.client.consumed.messages",
        "messaging.process.duration",
    } <= names

    _write_timeline_source(
        [request, enqueue, handled, call],
        [first, retry, second, published, served, reply],
    )


def test_a_dead_lettered_task_keeps_its_trace_id_and_dlq_show_prints_it(
    spans: InMemorySpanExporter,
    worker: CeleryWorker,
    receiver: OTLPReceiver,
    amqp_url: str,
    tmp_path: Path,
) -> None:
    # When a traced request enqueues a task that fails for good
    with spans_tracer().start_as_current_span("brain request") as request:
        result = tasks_for_tests.permanent.delay(str(tmp_path / "runs"))
    trace_id = f"{request.get_span_context().trace_id:032x}"
    # Then its run span says it was dead-lettered, and the copy to dlx is a send span
    run = receiver.find("the failed run", trace_id=trace_id, kind="CONSUMER")
    assert run.attributes["kitty.outcome"] == "dead_lettered"
    assert run.attributes["error.type"] == "kitty_tasks.core.errors.Permanent"
    receiver.find(
        "the dead letter's send",
        parent_id=run.span_id,
        name=f"send dlx:{RESEARCH_TASKS}",
    )
    # And `kitty-tasks dlq show` prints the trace id
    wait_for(lambda: queue_counts(amqp_url, dlq_name(RESEARCH_TASKS))[0] >= 1, 20)
    shown = subprocess.run(
        [KITTY_TASKS, "dlq", "show", RESEARCH_TASKS, "--json"],
        env={**os.environ, "RABBITMQ_URL": amqp_url},
        capture_output=True,
        text=True,
        check=True,
    )
    letters = json.loads(shown.stdout)["messages"]
    [letter] = [m for m in letters if m["id"] == result.id]
    assert letter["trace_id"] == trace_id
    table = subprocess.run(
        [KITTY_TASKS, "dlq", "show", RESEARCH_TASKS],
        env={**os.environ, "RABBITMQ_URL": amqp_url},
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "TRACE ID" in table.upper()
    assert trace_id in table
    # And the dead letter's own headers carry it
    letters_read = drain_until(amqp_url, dlq_name(RESEARCH_TASKS), 1)
    [dead] = [m for m in letters_read if m.headers["id"] == result.id]
    assert tracing.trace_id_of(dead.headers) == trace_id


def spans_tracer() -> Any:
    """A tracer of the provider the ``spans`` fixture installed."""
    return PROVIDER[0].get_tracer("tests")


def hex_ids_of_link(link: Any) -> tuple[str, str]:
    """(trace id, span id) a link points to, in hex."""
    return f"{link.context.trace_id:032x}", f"{link.context.span_id:016x}"


def _write_timeline_source(local: list[ReadableSpan], remote: list[ReceivedSpan]) -> None:
    """Keep the demo trace's spans (name, process, start, end) for docs/tracing.md's picture."""
    out = os.environ.get(TIMELINE_OUT)
    if not out:
        return
    rows = [
        {"process": "test process", "name": s.name, "start": s.start_time, "end": s.end_time}
        for s in local
    ] + [{"process": r.service, "name": r.name, "start": r.start, "end": r.end} for r in remote]
    Path(out).write_text(json.dumps(sorted(rows, key=lambda r: r["start"]), indent=1) + "\n")


@pytest.mark.parametrize("blocked", [False, True], ids=["off", "opentelemetry-missing"])
def test_with_tracing_off_nothing_is_imported_and_the_wire_is_unchanged(
    amqp_url: str, blocked: bool
) -> None:
    # Given a plain RPC server, and empty queues for a task and an event
    for queue in (CAD_TASKS, FABRICATION_EVENTS):
        purge(amqp_url, queue)
    server = RPCServer(amqp_url, service_name("echo"))
    server.register_handler(lambda payload: payload)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "KITTY_TRACING"))}
    # (Blocked, tracing is asked for: it must warn and stay off, not fail.)
    env.update(RABBITMQ_URL=amqp_url, **({"KITTY_TRACING": "true"} if blocked else {}))
    with serving(server):
        # When a client with tracing off enqueues a task, publishes an event and calls RPC
        argv = [sys.executable, "-m", "tests.integration.untraced_client", server.service]
        ran = subprocess.run(
            argv + (["block"] if blocked else []),
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            check=True,
        )
    report = json.loads(ran.stdout.splitlines()[-1])
    # Then all of it worked, and OpenTelemetry was never imported
    assert report["answer"] == {"n": 1}
    assert report["otel_imported"] is False
    assert report["event_traceparent"] is None
    if blocked:
        assert "OpenTelemetry is not installed" in ran.stderr
    # And neither message carries a trace header
    [task] = [
        m for m in drain_until(amqp_url, CAD_TASKS, 1) if m.headers["id"] == report["task_id"]
    ]
    [event] = [
        m
        for m in drain_until(amqp_url, FABRICATION_EVENTS, 1)
        if m.properties["message_id"] == report["event_id"]
    ]
    for message in (task, event):
        assert not {"traceparent", "tracestate"} & set(message.headers)


def test_every_task_of_a_group_gets_its_own_send_span_ended_at_the_confirm(
    spans: InMemorySpanExporter, amqp_url: str, tmp_path: Path
) -> None:
    # Given tracing on in this process
    from celery import group

    runs = str(tmp_path / "runs")
    try:
        # When a group of three tasks is published in one batch, inside a traced request
        with spans_tracer().start_as_current_span("brain request"):
            result = group(
                tasks_for_tests.record_order.s(runs, f"task-{n}") for n in range(3)
            ).apply_async()
        # Then each task has one send span, a child of the request, none ended as failed
        sends = [s for s in spans.get_finished_spans() if s.kind == SpanKind.PRODUCER]
        assert sorted(s.attributes["messaging.message.id"] for s in sends) == sorted(
            r.id for r in result.results
        )
        request = by_name(spans.get_finished_spans(), "brain request")
        assert {s.parent.span_id for s in sends if s.parent} == {request.get_span_context().span_id}
        assert [s.status.status_code.name for s in sends] == ["UNSET"] * 3
    finally:
        purge(amqp_url, RESEARCH_TASKS)
