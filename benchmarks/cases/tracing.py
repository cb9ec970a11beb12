"""Tracing overhead: the same publishes with tracing off and on, alternated in one run."""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from typing import Any

from benchmarks.cpu import CpuClock, broker_pid
from benchmarks.env import BenchEnv
from benchmarks.harness import Case, Sample, Target, Variant, measure
from benchmarks.payload import PAYLOAD
from kitty_tasks.core import tracing
from kitty_tasks.core.topology import AUDIT_EVENTS, BRAIN_COMMANDS, RESEARCH_TASKS

__all__ = ["TracingOverhead"]

#: The event type published: bound only by the ``audit.events`` stream.
EVENT_TYPE = "bench.tracing.tick"


class _Dropped:
    """A span exporter that keeps nothing: the cost measured is making spans, not shipping them."""

    def export(self, spans: Sequence[Any]) -> Any:
        from opentelemetry.sdk.trace.export import SpanExportResult

        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        return None

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return True


class TracingOverhead(Case):
    """``EventBus.publish`` and ``task.delay`` with tracing off, then on (batch span processor)."""

    name = "tracing_overhead"
    title = "tracing overhead per message: event publish and task enqueue, off vs on"

    def setup(self, env: BenchEnv, *, quick: bool) -> None:
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor

        from benchmarks import tasks_celery
        from events import EventBus

        self.env = env
        self.count = 300 if quick else 1000
        self.clock = CpuClock(broker_pid())
        self.bus = EventBus(env.url, source="bench").connect()
        tasks_celery.app.conf.broker_url = env.url
        self.noop = tasks_celery.noop
        self.provider = TracerProvider()
        self.provider.add_span_processor(BatchSpanProcessor(_Dropped()))
        self._purge()

    def _purge(self) -> None:
        self.env.purge(AUDIT_EVENTS, BRAIN_COMMANDS, RESEARCH_TASKS)

    def variants(self) -> list[Variant]:
        return [
            Variant("publish, tracing off", self._traced(self._publish, on=False)),
            Variant("publish, tracing on", self._traced(self._publish, on=True), platform=True),
            Variant("delay, tracing off", self._traced(self._delay, on=False)),
            Variant("delay, tracing on", self._traced(self._delay, on=True), platform=True),
        ]

    def targets(self) -> list[Target]:
        return [
            Target("traced publish >= 0.8 x untraced", "publish, tracing on",
                   "publish, tracing off", threshold=0.8),
            Target("traced enqueue >= 0.8 x untraced", "delay, tracing on",
                   "delay, tracing off", threshold=0.8),
        ]  # fmt: skip

    def _traced(self, run: Callable[[], Sample], *, on: bool) -> Callable[[], Sample]:
        def trial() -> Sample:
            if on:
                tracing.enable(self.provider)
            else:
                tracing.disable()
            try:
                return run()
            finally:
                tracing.disable()

        return trial

    def _publish(self) -> Sample:
        with measure(self.clock, self.count) as sample:
            for _ in range(self.count):
                self.bus.publish(EVENT_TYPE, PAYLOAD)
        self._purge()
        return sample

    def _delay(self) -> Sample:
        with measure(self.clock, self.count) as sample:
            for i in range(self.count):
                self.noop.delay(i, -1, PAYLOAD)
        self._purge()
        return sample

    def teardown(self) -> None:
        try:
            bus = getattr(self, "bus", None)
            if bus is not None:
                bus.disconnect()
            tracing.reset()
        except Exception as err:  # a failed teardown must not hide the trial's error
            print(f"  teardown: {err}", file=sys.stderr)
