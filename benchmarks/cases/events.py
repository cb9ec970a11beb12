"""Event cases: confirmed publish one at a time, batch publish, and consume, against raw clients."""

from __future__ import annotations

import json
import sys
import threading
import time
from typing import Any

import amqp
import pika

from benchmarks.cpu import CpuClock, broker_pid
from benchmarks.env import BenchEnv
from benchmarks.harness import Case, Sample, Target, Variant, measure
from benchmarks.payload import PAYLOAD, body
from kitty_tasks.core.topology import AUDIT_EVENTS, EVENTS_EXCHANGE

__all__ = ["EventConsume", "EventPublish"]

#: Publish cases' event type: bound only by the ``audit.events`` stream (``#``).
PUBLISH_TYPE = "bench.publish.tick"
#: Consume case's event type, pattern and subscriber queue.
CONSUME_TYPE = "bench.consume.tick"
CONSUME_PATTERN = "bench.consume.#"
CONSUME_QUEUE = "bench.consume.events"
#: Events per ``publish_many`` call in the batch case.
BATCH = 500
#: Prefetch and ack batch of the raw consumer (multiple-acks).
RAW_PREFETCH = 500
RAW_ACK_EVERY = 250


class EventPublish(Case):
    """``EventBus.publish`` / ``publish_many`` vs py-amqp with per-message confirm / no confirm."""

    name = "event_publish"
    title = "event publish, confirmed one at a time and batched"

    def setup(self, env: BenchEnv, *, quick: bool) -> None:
        from events import EventBus

        self.env = env
        self.one_count = 300 if quick else 1000
        self.batch_count = 2000 if quick else 10000
        self.clock = CpuClock(broker_pid())
        self.bus = EventBus(env.url, source="bench").connect()
        self.raw = env.amqp_connection()
        self.confirmed = self.raw.channel()
        self.confirmed.confirm_select()
        self.unconfirmed = self.raw.channel()
        env.purge(AUDIT_EVENTS)

    def variants(self) -> list[Variant]:
        return [
            Variant("EventBus.publish", self._publish, platform=True),
            Variant("py-amqp confirm", self._raw_confirmed),
            Variant(f"EventBus.publish_many x{BATCH}", self._publish_many, platform=True),
            Variant("py-amqp no confirm", self._raw_unconfirmed),
        ]

    def targets(self) -> list[Target]:
        return [
            Target("event publish >= 0.9 x raw confirmed", "EventBus.publish", "py-amqp confirm",
                   threshold=0.9),
            Target("event batch >= 0.7 x raw unconfirmed", f"EventBus.publish_many x{BATCH}",
                   "py-amqp no confirm", threshold=0.7),
        ]  # fmt: skip

    def _publish(self) -> Sample:
        with measure(self.clock, self.one_count) as sample:
            for _ in range(self.one_count):
                self.bus.publish(PUBLISH_TYPE, PAYLOAD)
        self.env.purge(AUDIT_EVENTS)
        return sample

    def _publish_many(self) -> Sample:
        with measure(self.clock, self.batch_count) as sample:
            for _ in range(self.batch_count // BATCH):
                self.bus.publish_many([(PUBLISH_TYPE, PAYLOAD)] * BATCH)
        self.env.purge(AUDIT_EVENTS)
        return sample

    def _raw(self, channel: amqp.Channel, count: int, *, confirm: bool) -> Sample:
        publish = channel.basic_publish_confirm if confirm else channel.basic_publish
        with measure(self.clock, count) as sample:
            for i in range(count):
                publish(
                    amqp.Message(body(i), delivery_mode=2, content_type="application/json"),
                    exchange=EVENTS_EXCHANGE,
                    routing_key=PUBLISH_TYPE,
                    mandatory=confirm,
                )
        self.env.purge(AUDIT_EVENTS)
        return sample

    def _raw_confirmed(self) -> Sample:
        return self._raw(self.confirmed, self.one_count, confirm=True)

    def _raw_unconfirmed(self) -> Sample:
        return self._raw(self.unconfirmed, self.batch_count, confirm=False)

    def teardown(self) -> None:
        for close in (getattr(self, "bus", None), getattr(self, "raw", None)):
            try:
                if close is not None:
                    close.disconnect() if hasattr(close, "disconnect") else close.close()
            except Exception as err:  # a failed teardown must not hide the trial's error
                print(f"  teardown: {err}", file=sys.stderr)


class EventConsume(Case):
    """An ``EventBus`` subscriber vs a pika consumer (prefetch 500, multiple-acks)."""

    name = "event_consume"
    title = "event consume (decode, validate, handler, ack)"

    def setup(self, env: BenchEnv, *, quick: bool) -> None:
        from events import EventBus

        self.env = env
        self.count = 2000 if quick else 10000
        self.clock = CpuClock(broker_pid())
        self.EventBus = EventBus
        # Publishing the same envelopes for both sides; the subscription declares the queue.
        self.publisher = EventBus(env.url, source="bench").connect()
        self.publisher.subscribe(CONSUME_PATTERN, lambda event: None, queue=CONSUME_QUEUE)

    def variants(self) -> list[Variant]:
        return [
            Variant("EventBus subscriber", self._platform, platform=True),
            Variant("pika consume", self._raw),
        ]

    def targets(self) -> list[Target]:
        return [Target("event consume >= 0.5 x raw", "EventBus subscriber", "pika consume",
                       threshold=0.5)]  # fmt: skip

    def _fill(self) -> None:
        self.env.purge(CONSUME_QUEUE)
        for _ in range(self.count // BATCH):
            self.publisher.publish_many([(CONSUME_TYPE, PAYLOAD)] * BATCH)
        self.env.purge(AUDIT_EVENTS)

    def _platform(self) -> Sample:
        self._fill()
        bus = self.EventBus(self.env.url, source="bench").connect()
        stamps: list[float] = []
        done = threading.Event()

        def handler(event: Any) -> None:
            stamps.append(time.perf_counter())
            if len(stamps) == self.count:
                done.set()

        bus.subscribe(CONSUME_PATTERN, handler, queue=CONSUME_QUEUE)
        try:
            with measure(self.clock, self.count) as sample:
                bus.start_consuming(block=False)
                if not done.wait(120):
                    raise TimeoutError(f"consumed {len(stamps)} of {self.count} events")
                # The handler returned, so its ack goes out: stop after the last one.
                bus.stop()
        finally:
            bus.disconnect()
        sample.seconds = stamps[-1] - stamps[0]
        return sample

    def _raw(self) -> Sample:
        self._fill()
        connection = pika.BlockingConnection(pika.URLParameters(self.env.url))
        channel = connection.channel()
        channel.basic_qos(prefetch_count=RAW_PREFETCH)
        stamps: list[float] = []

        def on_message(ch: Any, method: Any, props: Any, raw: bytes) -> None:
            json.loads(raw)
            stamps.append(time.perf_counter())
            if len(stamps) % RAW_ACK_EVERY == 0 or len(stamps) == self.count:
                ch.basic_ack(method.delivery_tag, multiple=True)
            if len(stamps) == self.count:
                ch.stop_consuming()

        channel.basic_consume(CONSUME_QUEUE, on_message)
        try:
            with measure(self.clock, self.count) as sample:
                channel.start_consuming()
        finally:
            connection.close()
        sample.seconds = stamps[-1] - stamps[0]
        return sample

    def teardown(self) -> None:
        publisher = getattr(self, "publisher", None)
        if publisher is not None:
            publisher.disconnect()
