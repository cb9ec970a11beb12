"""Declare the topology on a broker, and compare a live broker with it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import amqp
from kombu import Connection

from kitty_tasks.core.errors import TopologyError
from kitty_tasks.core.management import ManagementClient
from kitty_tasks.core.topology import MIN_BROKER_VERSION, TOPOLOGY, Topology

__all__ = ["Difference", "apply_topology", "broker_version", "compare_topology"]

#: Arguments the broker adds or normalises on its own; not part of our contract.
_IGNORED_ARGUMENTS = frozenset({"x-queue-type"})


@dataclass(frozen=True)
class Difference:
    """One way the broker differs from the code: what, which entity, and details."""

    kind: str  # "missing" or "inequivalent"
    entity: str  # "exchange", "queue" or "binding"
    name: str
    detail: str = ""

    def __str__(self) -> str:
        return f"{self.kind} {self.entity} {self.name}" + (
            f": {self.detail}" if self.detail else ""
        )


def broker_version(connection: Connection) -> tuple[int, ...] | None:
    """RabbitMQ's version from the connection's server properties; None for other brokers."""
    properties = getattr(connection.connection, "server_properties", None) or {}
    product, version = properties.get("product"), properties.get("version")
    if isinstance(product, bytes):
        product = product.decode()
    if isinstance(version, bytes):
        version = version.decode()
    if product != "RabbitMQ" or not isinstance(version, str):
        return None
    numbers = []
    for part in version.split("."):
        if not part.isdigit():
            break
        numbers.append(int(part))
    return tuple(numbers) or None


def check_broker(connection: Connection, topology: Topology) -> None:
    """Raise ``TopologyError`` when the broker is older than ``topology``'s profile needs."""
    version = broker_version(connection)
    needed = MIN_BROKER_VERSION[topology.profile]
    if version is not None and version[:2] < needed:
        have = ".".join(map(str, version))
        raise TopologyError(
            f"the {topology.profile.value} topology profile needs RabbitMQ "
            f"{'.'.join(map(str, needed))} or later (quorum queues with priorities); "
            f"this broker is {have}: set KITTY_TOPOLOGY_PROFILE=classic, or upgrade"
        )


def apply_topology(connection: Connection, topology: Topology = TOPOLOGY) -> None:
    """Declare every exchange, queue and binding of ``topology``; idempotent.

    Raises ``TopologyError`` naming the queue when one exists with other arguments or
    of another type (a classic ``audit.events`` from before it became a stream).
    Also raises it, before declaring anything, on a broker too old for the profile.
    """
    channel = connection.channel()
    try:
        check_broker(connection, topology)
        for ex in topology.exchanges:
            channel.exchange_declare(
                ex.name, ex.type, durable=ex.durable, auto_delete=False, arguments=ex.arguments
            )
        for q in topology.queues:
            try:
                channel.queue_declare(
                    q.name, durable=q.durable, auto_delete=False, arguments=q.arguments
                )
            except amqp.exceptions.PreconditionFailed as err:
                raise TopologyError(
                    f"queue {q.name!r} exists with other arguments or of another type, and "
                    f"the broker cannot change a queue in place ({err}); drain it, delete it, "
                    "then apply again (kitty-tasks topology verify lists every difference)"
                ) from err
            for binding in q.bindings:
                channel.queue_bind(q.name, binding.exchange, binding.routing_key)
    finally:
        channel.close()


def _normalise(arguments: dict[str, Any] | None, queue_type: str | None = None) -> dict[str, Any]:
    args = {k: v for k, v in (arguments or {}).items() if k not in _IGNORED_ARGUMENTS}
    if queue_type and queue_type != "classic":
        args["x-queue-type"] = queue_type
    return args


def compare_topology(
    client: ManagementClient, vhost: str, topology: Topology = TOPOLOGY
) -> list[Difference]:
    """Every difference between ``vhost`` on the live broker and ``topology``."""
    differences: list[Difference] = []
    live_exchanges = {e["name"]: e for e in client.exchanges(vhost)}
    for ex in topology.exchanges:
        live = live_exchanges.get(ex.name)
        if live is None:
            differences.append(Difference("missing", "exchange", ex.name))
            continue
        if live["type"] != ex.type or live["durable"] != ex.durable:
            differences.append(
                Difference(
                    "inequivalent",
                    "exchange",
                    ex.name,
                    f"type/durable {live['type']}/{live['durable']}, "
                    f"code says {ex.type}/{ex.durable}",
                )
            )
        if (live.get("arguments") or {}) != ex.arguments:
            differences.append(
                Difference(
                    "inequivalent",
                    "exchange",
                    ex.name,
                    f"arguments {live.get('arguments')}, code says {ex.arguments}",
                )
            )
    live_queues = {q["name"]: q for q in client.queues(vhost)}
    for q in topology.queues:
        live = live_queues.get(q.name)
        if live is None:
            differences.append(Difference("missing", "queue", q.name))
            continue
        want = _normalise(q.arguments, q.arguments.get("x-queue-type"))
        have = _normalise(live.get("arguments"), live.get("type"))
        if want != have or live["durable"] != q.durable:
            changed = sorted(k for k in want.keys() | have.keys() if want.get(k) != have.get(k))
            detail = ", ".join(f"{k}={have.get(k)!r} (code: {want.get(k)!r})" for k in changed)
            if live["durable"] != q.durable:
                detail = f"durable={live['durable']} (code: {q.durable}) " + detail
            if want.get("x-queue-type") != have.get("x-queue-type"):
                detail += "; a queue's type cannot change: drain it, delete it, then apply"
            differences.append(Difference("inequivalent", "queue", q.name, detail.strip()))
    live_bindings = {
        (b["source"], b["destination"], b["routing_key"])
        for b in client.bindings(vhost)
        if b["destination_type"] == "queue"
    }
    for queue, binding in topology.bindings():
        if (binding.exchange, queue, binding.routing_key) not in live_bindings:
            differences.append(
                Difference(
                    "missing",
                    "binding",
                    f"{binding.exchange} -> {queue}",
                    f"routing key {binding.routing_key!r}",
                )
            )
    return differences
