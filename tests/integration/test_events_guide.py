"""The KITT guide's Event Bus examples, run as written against the real broker.

Each snippet is the guide's text; only the import line (``from events import
EventBus`` instead of ``from common.messaging import ...``) and the broker URL
differ. Names a snippet uses but does not define (``RABBITMQ_URL``, ``job_id``,
``send_notification``, ``db``, ...) are given to it, as the surrounding service would.
"""

from __future__ import annotations

import logging
import signal
import subprocess
import sys
import textwrap
import threading
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import pika
import pytest

from events import Event, EventBus
from kitty_tasks.core.topology import subscriber_queue_name
from tests.helpers import ROOT, queue_counts, wait_for
from tests.integration.events_helpers import Collector, consuming, drain, purge, unique

pytestmark = pytest.mark.rabbitmq

GUIDE_URL = "amqp://kitty:changeme@localhost:5672/"
GUIDE_IMPORT = "from common.messaging import EventBus"

QUICK_START_PUBLISHER = """\
from common.messaging import EventBus

# Publisher
bus = EventBus("amqp://kitty:changeme@localhost:5672/", source="fabrication-service")
bus.connect()
bus.publish("fabrication.print.started", {
    "job_id": "print_123",
    "printer_id": "bamboo_h2d",
    "material_id": "pla_black_esun",
})
bus.disconnect()
"""

QUICK_START_SUBSCRIBER = """\
from common.messaging import EventBus

# Subscriber
def handle_print_started(event):
    print(f"Print started: {event.data['job_id']}")

bus = EventBus("amqp://kitty:changeme@localhost:5672/", source="audit-service")
bus.connect()
bus.subscribe("fabrication.print.#", handle_print_started)
bus.start_consuming()  # Blocking
"""

PATTERN_1_PUBLISHER = """\
# Fabrication Service (Publisher)
from common.messaging import EventBus

bus = EventBus(RABBITMQ_URL, source="fabrication-service")
bus.connect()

# Publish when print starts
bus.publish("fabrication.print.started", {
    "job_id": job_id,
    "printer_id": printer_id,
    "started_at": datetime.now().isoformat(),
})

# Publish when print completes
bus.publish("fabrication.print.completed", {
    "job_id": job_id,
    "success": True,
    "duration_hours": 3.5,
})
"""

PATTERN_1_AUDIT = """\
# Audit Service (Subscriber)
def log_fabrication_event(event):
    print(f"Audit: {event.event_type} at {event.timestamp}")
    # Store in audit log database

bus = EventBus(RABBITMQ_URL, source="audit-service")
bus.connect()
bus.subscribe("fabrication.#", log_fabrication_event)
bus.start_consuming()
"""

PATTERN_1_NOTIFICATION = """\
# Notification Service (Subscriber)
def notify_user(event):
    if event.event_type == "fabrication.print.completed":
        send_notification(f"Print {event.data['job_id']} completed!")

bus = EventBus(RABBITMQ_URL, source="notification-service")
bus.connect()
bus.subscribe("fabrication.print.completed", notify_user)
bus.start_consuming()
"""

BEST_PRACTICE_2 = """\
def handle_print_started(event):
    job_id = event.data["job_id"]

    # Check if already processed
    if db.exists(job_id):
        logger.info(f"Duplicate event for {job_id}, skipping")
        return

    # Process event
    db.insert(job_id, event.data)
"""

BEST_PRACTICE_3_CONTEXT = """\
with EventBus(RABBITMQ_URL, source="my-service") as bus:
    bus.publish("event.type", {"data": "..."})
# Automatically disconnects
"""

BEST_PRACTICE_3_AVOID = """\
# DON'T: Open new connection per message
for i in range(1000):
    bus = EventBus(RABBITMQ_URL)
    bus.connect()
    bus.publish("event", {})
    bus.disconnect()  # Very inefficient!
"""

BEST_PRACTICE_3_DO = """\
# DO: Reuse connection
bus = EventBus(RABBITMQ_URL, source="my-service")
bus.connect()
for i in range(1000):
    bus.publish("event", {"index": i})
bus.disconnect()
"""

BEST_PRACTICE_5 = """\
# Queues are durable by default
queue.declare_queue("my.queue", durable=True)

# Messages are persistent by default (delivery_mode=2)
bus.publish("event.type", data, properties=pika.BasicProperties(
    delivery_mode=2  # Persistent
))
"""


def adapt(snippet: str, url: str) -> str:
    """The snippet with our import line and broker URL, nothing else changed."""
    return snippet.replace(GUIDE_IMPORT, "from events import EventBus").replace(GUIDE_URL, url)


def run(snippet: str, url: str, **names: Any) -> dict[str, Any]:
    """Execute a guide snippet in a namespace with ``names``; return the namespace."""
    namespace: dict[str, Any] = {"EventBus": EventBus, "RABBITMQ_URL": url, **names}
    exec(compile(adapt(snippet, url), "<guide>", "exec"), namespace)  # noqa: S102 - the guide's own code
    return namespace


class Blocking:
    """A snippet that ends in ``bus.start_consuming()``, run on a thread of its own."""

    def __init__(self, snippet: str, url: str, **names: Any) -> None:
        self.namespace: dict[str, Any] = {"EventBus": EventBus, "RABBITMQ_URL": url, **names}
        code = compile(adapt(snippet, url), "<guide>", "exec")
        self.thread = threading.Thread(target=exec, args=(code, self.namespace), daemon=True)

    def start(self) -> Blocking:
        self.thread.start()
        namespace = self.namespace
        wait_for(lambda: "bus" in namespace and namespace["bus"].wait_until_consuming(0.1), 15)
        return self

    def stop(self) -> None:
        self.namespace["bus"].stop()
        self.thread.join(15)
        assert not self.thread.is_alive()
        self.namespace["bus"].disconnect()


def test_quick_start_publisher_and_blocking_subscriber_stopped_by_ctrl_c(
    amqp_url: str, tmp_path: Path
) -> None:
    # Given the Quick Start subscriber running as a process of its own
    queue = subscriber_queue_name("audit-service", "fabrication.print.#")
    script = tmp_path / "subscriber.py"
    script.write_text(adapt(QUICK_START_SUBSCRIBER, amqp_url))
    process = subprocess.Popen(
        [sys.executable, "-u", str(script)], cwd=ROOT, text=True,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        wait_for(lambda: _consumers(amqp_url, queue) == 1, 30, what="the subscriber to consume")
        purge(amqp_url, queue)
        # When the Quick Start publisher runs
        run(QUICK_START_PUBLISHER, amqp_url)
        # Then the subscriber prints the job, and Ctrl-C stops it cleanly
        assert process.stdout is not None
        printed = _read_until(process.stdout, "Print started: print_123", timeout=15)
        process.send_signal(signal.SIGINT)
        rest, _ = process.communicate(timeout=20)
        output = printed + rest
    finally:
        if process.poll() is None:
            process.kill()
    assert "Print started: print_123" in output
    assert process.returncode == 0, output


def _consumers(url: str, queue: str) -> int:
    try:
        return queue_counts(url, queue)[1]
    except Exception:  # not declared yet
        return -1


def test_pattern_1_event_driven_architecture(
    amqp_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    # Given the audit and notification services of Pattern 1, as written
    for source, pattern in [
        ("audit-service", "fabrication.#"),
        ("notification-service", "fabrication.print.completed"),
    ]:
        with EventBus(amqp_url, source=source) as bus:
            purge(amqp_url, bus.subscribe(pattern, print).queue)
    notifications: list[str] = []
    audit = Blocking(PATTERN_1_AUDIT, amqp_url).start()
    notify = Blocking(
        PATTERN_1_NOTIFICATION, amqp_url, send_notification=notifications.append
    ).start()
    try:
        # When the fabrication service publishes as Pattern 1 shows
        publisher = run(
            PATTERN_1_PUBLISHER, amqp_url, job_id="print_456", printer_id="bamboo_h2d",
            datetime=datetime,
        )  # fmt: skip
        publisher["bus"].disconnect()
        # Then the notification service notifies once and the audit service logs both
        printed: list[str] = []

        def audited() -> bool:
            printed.append(capsys.readouterr().out)
            return "Audit: fabrication.print.completed at " in "".join(printed)

        wait_for(lambda: notifications, 15)
        wait_for(audited, 15)
    finally:
        audit.stop()
        notify.stop()
    assert notifications == ["Print print_456 completed!"]
    audit_lines = [line for line in "".join(printed).splitlines() if line.startswith("Audit:")]
    assert [line.split(" at ")[0] for line in audit_lines] == [
        "Audit: fabrication.print.started",
        "Audit: fabrication.print.completed",
    ]


def test_pattern_1_audit_sees_both_events(amqp_url: str) -> None:
    # The audit handler of Pattern 1 prints; here its bus is checked for what it consumed
    audit_queue = subscriber_queue_name("audit-service", "fabrication.#")
    with EventBus(amqp_url, source="audit-service") as bus:
        bus.subscribe("fabrication.#", print)
    purge(amqp_url, audit_queue)
    publisher = run(
        PATTERN_1_PUBLISHER, amqp_url, job_id="print_789", printer_id="p", datetime=datetime
    )
    publisher["bus"].disconnect()
    messages = drain(amqp_url, audit_queue)
    events = [Event.decode(m.body) for m in messages]
    assert [e.event_type for e in events] == [
        "fabrication.print.started",
        "fabrication.print.completed",
    ]
    assert events[0].data["started_at"].startswith(str(datetime.now().year))
    assert events[1].data == {"job_id": "print_789", "success": True, "duration_hours": 3.5}


class FakeDb:
    """The user's own database of BP 2 (not the broker): a dict."""

    def __init__(self) -> None:
        self.rows: dict[str, dict[str, Any]] = {}

    def exists(self, key: str) -> bool:
        return key in self.rows

    def insert(self, key: str, value: dict[str, Any]) -> None:
        self.rows[key] = value


def test_best_practice_2_idempotent_handler(
    amqp_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    # Given the guide's idempotent handler subscribed on a bus
    db = FakeDb()
    namespace = run(BEST_PRACTICE_2, amqp_url, db=db, logger=logging.getLogger("guide"))
    deliveries = Collector()

    def handler(event: Event) -> None:
        deliveries(event)
        namespace["handle_print_started"](event)

    bus = EventBus(amqp_url, source=unique("bp2-service"))
    bus.connect()
    bus.subscribe("fabrication.print.started", handler)
    # When the same job's event is delivered twice
    with (
        caplog.at_level(logging.INFO, "guide"),
        consuming(bus),
        EventBus(amqp_url, source="fabrication-service") as publisher,
    ):
        event = publisher.publish("fabrication.print.started", {"job_id": "print_123"})
        publisher.publish_many([event])
        deliveries.wait_for(lambda events: len(events) == 2)
    # Then it was stored once and the duplicate logged
    assert db.rows == {"print_123": {"job_id": "print_123"}}
    assert "Duplicate event for print_123, skipping" in caplog.text


@pytest.mark.slow
def test_best_practice_3_connection_management(amqp_url: str) -> None:
    # The context manager form publishes and disconnects
    namespace = run(BEST_PRACTICE_3_CONTEXT, amqp_url)
    assert not namespace["bus"].connected
    # Reusing one connection is much faster than one connection per message
    started = time.monotonic()
    namespace = run(BEST_PRACTICE_3_DO, amqp_url)
    reuse = time.monotonic() - started
    assert not namespace["bus"].connected
    started = time.monotonic()
    run(BEST_PRACTICE_3_AVOID, amqp_url)
    per_message = time.monotonic() - started
    print(f"\n1000 publishes: one connection {reuse:.2f}s, a connection each {per_message:.2f}s")
    assert per_message > reuse


def test_best_practice_5_durable_queue_and_persistent_message(amqp_url: str) -> None:
    # `queue` in the guide is whatever declares queues; the event bus does (declare_queue)
    with EventBus(amqp_url, source="my-service") as bus:
        run(BEST_PRACTICE_5, amqp_url, queue=bus, bus=bus, data={"k": "v"}, pika=pika)
        bus.declare_queue("my.queue", pattern="event.type")
        event = bus.publish(
            "event.type", {"k": "w"}, properties=pika.BasicProperties(delivery_mode=2)
        )
    [message] = drain(amqp_url, "my.queue")
    assert message.properties["delivery_mode"] == 2
    assert Event.decode(message.body) == event
    assert queue_counts(amqp_url, "my.queue.dlq") == (0, 0)


def test_message_design_example_is_published_as_is(amqp_url: str) -> None:
    # The guide's message structure (BP 1) is the envelope on the wire
    message = textwrap.dedent("""\
        {
            "event_id": "uuid",
            "event_type": "fabrication.print.started",
            "timestamp": "2025-11-16T12:00:00Z",
            "source": "fabrication-service",
            "correlation_id": "request-uuid",
            "data": {"job_id": "print_123", "printer_id": "bamboo_h2d"}
        }""")
    queue = unique("bp1")
    with EventBus(amqp_url, source="fabrication-service") as bus:
        bus.declare_queue(queue, pattern="fabrication.print.started")
        bus.publish_many([Event.model_validate_json(message)])
    [received] = drain(amqp_url, queue)
    event = Event.decode(received.body)
    assert event.event_id == "uuid"
    assert event.correlation_id == "request-uuid"
    assert received.properties["message_id"] == "uuid"


def _read_until(stream: Any, text: str, timeout: float) -> str:
    """Lines read from ``stream`` up to the one holding ``text``; fails after ``timeout``."""
    lines: list[str] = []
    found = threading.Event()

    def read() -> None:
        for line in stream:
            lines.append(line)
            if text in line:
                found.set()
                return

    threading.Thread(target=read, daemon=True).start()
    assert found.wait(timeout), f"{text!r} not printed within {timeout:g}s: {''.join(lines)!r}"
    return "".join(lines)
