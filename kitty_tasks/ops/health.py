"""Is the platform healthy? Broker reachable, no alarms, every task queue consumed."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from kombu import Connection

from kitty_tasks.core.management import ManagementClient
from kitty_tasks.core.topology import TASK_QUEUES
from kitty_tasks.ops.queues import (
    QueueNotFound,
    is_reported,
    queue_kind,
    queue_stats,
    rpc_service_queues,
)

__all__ = ["HealthReport", "QueueHealth", "check_health"]


@dataclass(frozen=True)
class QueueHealth:
    """One queue as health sees it."""

    name: str
    kind: str
    ready: int
    unacked: int
    consumers: int
    problem: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        return asdict(self)


@dataclass
class HealthReport:
    """The verdict, its reasons, and what was looked at."""

    vhost: str
    broker: str
    nodes: list[dict[str, Any]] = field(default_factory=list)
    alarms: list[str] = field(default_factory=list)
    queues: list[QueueHealth] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def healthy(self) -> bool:
        """True when nothing is wrong."""
        return not self.problems

    @property
    def reason(self) -> str:
        """One line saying what is wrong (or that nothing is)."""
        if self.healthy:
            return "healthy"
        more = f" (+{len(self.problems) - 1} more)" if len(self.problems) > 1 else ""
        return self.problems[0] + more

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        return {
            "healthy": self.healthy,
            "reason": self.reason,
            "vhost": self.vhost,
            "broker": self.broker,
            "nodes": self.nodes,
            "alarms": self.alarms,
            "problems": self.problems,
            "warnings": self.warnings,
            "queues": [queue.to_dict() for queue in self.queues],
        }


def node_alarms(nodes: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[str]]:
    """Each node's memory and disk figures, and the alarms (or a stopped node) to report."""
    summary, alarms = [], []
    for node in nodes:
        name = str(node.get("name"))
        summary.append(
            {
                "name": name,
                "running": bool(node.get("running")),
                "mem_used": node.get("mem_used"),
                "mem_limit": node.get("mem_limit"),
                "disk_free": node.get("disk_free"),
                "disk_free_limit": node.get("disk_free_limit"),
            }
        )
        if not node.get("running"):
            alarms.append(f"node {name} is not running")
        if node.get("mem_alarm"):
            alarms.append(f"memory alarm on {name}: publishers are blocked")
        if node.get("disk_free_alarm"):
            alarms.append(f"disk alarm on {name}: publishers are blocked")
    return summary, alarms


def check_health(
    connection: Connection,
    management: ManagementClient,
    vhost: str,
    *,
    broker: str = "",
    dead_letters_fail: bool = False,
) -> HealthReport:
    """Look at the broker and the platform's queues of ``vhost``; list what is wrong, if anything.

    The platform's queues are the topology's, the DLQs, the event subscribers' and the
    RPC servers' (``is_reported``); reply queues and other strays are left out.

    The task queues' consumers and depths come from a passive declare, which is
    exact; the other queues come from the management API, whose numbers can lag
    by its statistics interval (5 s by default). Dead letters are a warning
    unless ``dead_letters_fail``.
    """
    report = HealthReport(vhost=vhost, broker=broker)
    report.nodes, report.alarms = node_alarms(list(management.get("nodes") or []))
    report.problems.extend(report.alarms)
    rpc_queues = rpc_service_queues(management, vhost)
    listed = {
        str(q["name"]): q
        for q in management.queues(vhost)
        if is_reported(str(q["name"]), rpc_queues)
    }
    for name in TASK_QUEUES:
        try:
            stats = queue_stats(connection, name)
        except QueueNotFound:
            missing = f"task queue {name} is missing (run: kitty-tasks topology apply)"
            report.queues.append(QueueHealth(name, "task", 0, 0, 0, missing))
            report.problems.append(missing)
            continue
        unacked = int(listed.get(name, {}).get("messages_unacknowledged") or 0)
        problem = None if stats.consumers else f"task queue {name} has no consumer"
        report.queues.append(
            QueueHealth(name, "task", stats.messages, unacked, stats.consumers, problem)
        )
        if problem:
            report.problems.append(problem)
    for name in sorted(listed):
        if name in TASK_QUEUES:
            continue
        info = listed[name]
        kind = queue_kind(name, rpc_queues)
        ready = int(info.get("messages_ready") or 0)
        unacked = int(info.get("messages_unacknowledged") or 0)
        report.queues.append(
            QueueHealth(name, kind, ready, unacked, int(info.get("consumers") or 0))
        )
        if kind == "dlq" and ready:
            note = f"{name} holds {ready} dead letter(s)"
            (report.problems if dead_letters_fail else report.warnings).append(note)
    return report
