"""Publish and subscribe on the real broker: the guide's subscribers, patterns, queues."""

from __future__ import annotations

import threading
from collections import Counter
from datetime import timedelta

import pytest

from events import Event, EventBus
from events.replay import replay_events
from kitty_tasks.core.topology import FABRICATION_EVENTS, NOTIFICATIONS, dlq_name
from tests.helpers import queue_counts
from tests.integration.events_helpers import Collector, consuming, purge, unique

pytestmark = pytest.mark.rabbitmq


def test_the_guides_three_subscribers_get_exactly_what_their_patterns_select(
    amqp_url: str,
) -> None:
    # Given the guide's audit (fabrication.#) and notification (fabrication.print.completed)
    # services and a third one on fabrication.print.#, each a bus of its own
    run = unique("run")
    audit, notify, analytics = Collector(), Collector(), Collector()
    buses = []
    for source, pattern, handler in [
        (f"audit-service-{run}", "fabrication.#", audit),
        (f"notification-service-{run}", "fabrication.print.completed", notify),
        (f"analytics-service-{run}", "fabrication.print.#", analytics),
    ]:
        bus = EventBus(amqp_url, source=source)
        bus.connect()
        bus.subscribe(pattern, handler)
        buses.append(bus)
    with consuming(buses[0]), consuming(buses[1]), consuming(buses[2]):
        # When the fabrication service publishes events of four types, the sentinel last
        with EventBus(amqp_url, source="fabrication-service") as publisher:
            started = publisher.publish(
                "fabrication.print.started",
                {"job_id": run, "printer_id": "bamboo_h2d", "material_id": "pla_black_esun"},
                correlation_id="req-1",
            )
            offline = publisher.publish("fabrication.printer.offline", {"printer_id": "p1"})
            publisher.publish("cad.model.generated", {"model_id": "m1"})
            completed = publisher.publish(
                "fabrication.print.completed",
                {"job_id": run, "success": True, "duration_hours": 3.5},
            )
        # Then each receives exactly its pattern's events, in order, fields intact
        # (the queues are FIFO: once the last event arrived nothing else is on its way)
        for collector in (audit, notify, analytics):
            collector.wait_for_id(completed.event_id)
        assert audit.events == [started, offline, completed]
        assert analytics.events == [started, completed]
        assert notify.events == [completed]
        got = audit.events[0]
        assert got.event_id == started.event_id
        assert got.source == "fabrication-service"
        assert got.timestamp == started.timestamp
        assert got.correlation_id == "req-1"
        assert got.data == {
            "job_id": run,
            "printer_id": "bamboo_h2d",
            "material_id": "pla_black_esun",
        }


def test_subscriber_queue_is_durable_with_its_dead_letter_wiring(
    amqp_url: str, management_client: object, test_vhost: str
) -> None:
    from kitty_tasks.core.management import ManagementClient

    assert isinstance(management_client, ManagementClient)
    source = unique("wiring-service")
    with EventBus(amqp_url, source=source) as bus:
        subscription = bus.subscribe("fabrication.print.#", Collector())
    queues = {q["name"]: q for q in management_client.queues(test_vhost)}
    queue = queues[f"{source}.fabrication.print.all.events"]
    assert queue["durable"] is True
    assert queue["type"] == "classic"
    # RabbitMQ 4.x lists the queue type among the arguments too; 3.x does not.
    arguments = {k: v for k, v in queue["arguments"].items() if k != "x-queue-type"}
    assert arguments == {
        "x-dead-letter-exchange": "dlx",
        "x-dead-letter-routing-key": subscription.queue,
    }
    assert queues[dlq_name(subscription.queue)]["durable"] is True
    bindings = {
        (b["source"], b["destination"], b["routing_key"])
        for b in management_client.bindings(test_vhost)
    }
    assert ("kitty.events", subscription.queue, "fabrication.print.#") in bindings
    assert ("dlx", dlq_name(subscription.queue), subscription.queue) in bindings


def test_events_published_after_subscribe_wait_for_a_late_consumer(amqp_url: str) -> None:
    # Given a subscription made but not yet consuming
    collector = Collector()
    bus = EventBus(amqp_url, source=unique("late-service"))
    bus.connect()
    bus.subscribe("fabrication.print.started", collector)
    # When an event is published, then consuming starts
    with EventBus(amqp_url, source="fabrication-service") as publisher:
        event = publisher.publish("fabrication.print.started", {"job_id": "j"})
    with consuming(bus):
        collector.wait_for_id(event.event_id)
    assert collector.ids == [event.event_id]


def test_several_subscriptions_of_one_bus_consume_concurrently(amqp_url: str) -> None:
    # Given one bus with two subscriptions, the first handler blocks until the second ran
    second_ran = threading.Event()
    first_finished = threading.Event()

    def first(event: Event) -> None:
        assert second_ran.wait(10), "the second subscription never ran while the first was busy"
        first_finished.set()

    second = Collector()

    def second_handler(event: Event) -> None:
        second(event)
        second_ran.set()

    bus = EventBus(amqp_url, source=unique("busy-service"))
    bus.connect()
    bus.subscribe("fabrication.print.started", first)
    bus.subscribe("fabrication.print.completed", second_handler)
    with consuming(bus), EventBus(amqp_url, source="fabrication-service") as publisher:
        # When the first handler's event arrives before the second's
        publisher.publish("fabrication.print.started", {"job_id": "j"})
        publisher.publish("fabrication.print.completed", {"job_id": "j"})
        # Then both complete: the second was handled while the first was still busy
        assert first_finished.wait(15)
    assert len(second.events) == 1


def test_the_guides_predeclared_queues_are_used_when_named(amqp_url: str, test_vhost: str) -> None:
    # Given subscribers on the guide's two event queues, emptied of earlier tests' events
    for queue in (FABRICATION_EVENTS, NOTIFICATIONS):
        purge(amqp_url, queue)
    fabrication, notifications = Collector(), Collector()
    bus = EventBus(amqp_url, source=unique("guide-queues"))
    bus.connect()
    bus.subscribe("fabrication.#", fabrication, queue=FABRICATION_EVENTS)
    bus.subscribe("fabrication.print.completed", notifications, queue=NOTIFICATIONS)
    with consuming(bus), EventBus(amqp_url, source="fabrication-service") as publisher:
        # When events are published, the last one selected by both
        started = publisher.publish("fabrication.print.started", {"job_id": "j"})
        user = publisher.publish("notification.user.created", {"user": "u"})
        completed = publisher.publish("fabrication.print.completed", {"job_id": "j"})
        for collector in (fabrication, notifications):
            collector.wait_for_id(completed.event_id)
        # Then each queue's own binding still works next to the subscription's pattern
        assert fabrication.ids == [started.event_id, completed.event_id]
        assert notifications.ids == [user.event_id, completed.event_id]
        # and the queues kept their guide arguments (declaring others would have failed)
        assert queue_counts(amqp_url, FABRICATION_EVENTS)[1] == 1
    # (audit.events is a stream, read by replay: tests/integration/test_events_replay.py)
    audit = replay_events(amqp_url, since=timedelta(minutes=5))
    sent = {started.event_id, user.event_id, completed.event_id}
    assert [e.event_id for e in audit if e.event_id in sent] == [
        started.event_id,
        user.event_id,
        completed.event_id,
    ]


def test_publishing_from_many_threads_is_safe(amqp_url: str) -> None:
    # Given one bus shared by 8 threads and one subscriber
    collector = Collector()
    subscriber = EventBus(amqp_url, source=unique("threads-service"))
    subscriber.connect()
    subscriber.subscribe("load.thread.sent", collector)
    published: list[Event] = []
    lock = threading.Lock()
    errors: list[BaseException] = []
    with consuming(subscriber), EventBus(amqp_url, source="load-service", pool_limit=4) as bus:

        def work(thread: int) -> None:
            try:
                for i in range(100):
                    event = bus.publish("load.thread.sent", {"thread": thread, "i": i})
                    with lock:
                        published.append(event)
            except BaseException as err:  # surfaced below, with the others
                errors.append(err)

        threads = [threading.Thread(target=work, args=(t,)) for t in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        # Then every publish was confirmed, and every event arrived exactly once
        assert errors == []
        assert len(published) == 800
        collector.wait_for(lambda events: len(events) >= 800)
    assert Counter(collector.ids) == Counter(e.event_id for e in published)


def test_events_published_by_a_handler_carry_causation_and_correlation(amqp_url: str) -> None:
    # Given a handler that publishes a follow-up event
    followups = Collector()
    bus = EventBus(amqp_url, source=unique("chain-service"))
    bus.connect()

    def react(event: Event) -> None:
        bus.publish("fabrication.print.queued", {"job_id": event.data["job_id"]})

    bus.subscribe("fabrication.print.requested", react)
    bus.subscribe("fabrication.print.queued", followups)
    with consuming(bus), EventBus(amqp_url, source="brain-service") as publisher:
        cause = publisher.publish("fabrication.print.requested", {"job_id": "j"}, "req-42")
        followups.wait_for(lambda events: len(events) == 1)
    followup = followups.events[0]
    assert followup.causation_id == cause.event_id
    assert followup.correlation_id == "req-42"
    assert followup.source == bus.source
