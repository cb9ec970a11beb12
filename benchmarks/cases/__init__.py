"""The issue's cases, one module per pattern; ``CASES`` lists them in run order."""

from __future__ import annotations

from benchmarks.cases.events import EventConsume, EventPublish
from benchmarks.cases.rpc import RPCLatency, RPCThroughput
from benchmarks.cases.tasks import TaskBulk, TaskDrain, TaskEnqueue
from benchmarks.cases.tracing import TracingOverhead
from benchmarks.harness import Case

__all__ = ["CASES"]

CASES: dict[str, type[Case]] = {
    EventPublish.name: EventPublish,
    EventConsume.name: EventConsume,
    TaskEnqueue.name: TaskEnqueue,
    TaskBulk.name: TaskBulk,
    TaskDrain.name: TaskDrain,
    RPCLatency.name: RPCLatency,
    RPCThroughput.name: RPCThroughput,
    TracingOverhead.name: TracingOverhead,
}
