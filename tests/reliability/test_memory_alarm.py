"""Scenario 6: a memory alarm blocks publishers; they fail within their bound, then recover."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from events import EventBus
from kitty_tasks.core.errors import PublishError, PublishTimeout
from kitty_tasks.core.topology import RESEARCH_TASKS
from tests.reliability.helpers import queue_counts
from tests.reliability.node import RabbitNode
from tests.reliability.workerapp import RECORD_TASK, make_app

#: The publishers' configured bound in these tests (KITTY_PUBLISH_TIMEOUT is 10 s by default).
BOUND = 2.0
#: A Celery publish tries 1 + 3 times (task_publish_retry_policy) and each try may wait
#: once for the confirm and once for channel.close-ok: the worst case is 8 bounds.
CELERY_WORST_CASE = 8 * BOUND + 5


@pytest.fixture
def memory_alarm(rabbit_node: RabbitNode) -> Iterator[RabbitNode]:
    """Raise the memory alarm for the test; clear it afterwards whatever happens."""
    rabbit_node.set_memory_watermark(0.0001)
    try:
        yield rabbit_node
    finally:
        rabbit_node.set_memory_watermark(0.4)


def test_celery_publish_times_out_under_memory_alarm_and_recovers(
    node_url: str, memory_alarm: RabbitNode
) -> None:
    """Guarantee: a blocked task publish raises PublishTimeout within its bound, never hangs."""
    # Given the platform's Celery settings with a 2 s publish bound, and the alarm raised
    app = make_app(node_url)
    options = app.conf.broker_transport_options
    assert options["read_timeout"] == options["write_timeout"]  # the platform sets both
    app.conf.broker_transport_options = {**options, "read_timeout": BOUND, "write_timeout": BOUND}
    task = app.tasks[RECORD_TASK]
    # When a task is published
    started = time.monotonic()
    with pytest.raises(PublishTimeout, match="memory or disk alarm") as caught:
        task.apply_async(args=(1,), task_id="under-alarm")
    elapsed = time.monotonic() - started
    # Then it failed with a clear error after the bound, not before and not never
    assert BOUND <= elapsed <= CELERY_WORST_CASE, f"took {elapsed:.1f}s"
    print(f"celery publish under alarm: PublishTimeout after {elapsed:.1f}s: {caught.value}")
    # And once the alarm clears, the same app publishes (and is confirmed) again
    memory_alarm.set_memory_watermark(0.4)
    before = queue_counts(node_url, RESEARCH_TASKS)[0]
    task.apply_async(args=(2,), task_id="after-alarm")
    assert queue_counts(node_url, RESEARCH_TASKS)[0] == before + 1
    app.close()


def test_event_publish_times_out_under_memory_alarm_and_recovers(
    node_url: str, memory_alarm: RabbitNode
) -> None:
    """Guarantee: a blocked EventBus publish raises PublishTimeout within its bound."""
    # Given a bus with a 2 s publish bound, connected, and the alarm raised
    with EventBus(node_url, source="reliability", publish_timeout=BOUND) as bus:
        bus.declare_queue("reliability.alarm.events", pattern="reliability.alarm.#")
        # When an event is published
        started = time.monotonic()
        with pytest.raises(PublishError) as caught:
            bus.publish("reliability.alarm.raised", {"n": 1})
        elapsed = time.monotonic() - started
        # Then the caller gets a timeout naming the alarm, after the bound
        assert isinstance(caught.value, PublishTimeout), repr(caught.value)
        assert "alarm" in str(caught.value)
        assert BOUND <= elapsed <= BOUND + 5, f"took {elapsed:.1f}s"
        print(f"event publish under alarm: {type(caught.value).__name__} after {elapsed:.1f}s")
        # And after the alarm clears the same bus publishes again
        memory_alarm.set_memory_watermark(0.4)
        event = bus.publish("reliability.alarm.cleared", {"n": 2})
        assert event.event_id
        assert queue_counts(node_url, "reliability.alarm.events")[0] >= 1
