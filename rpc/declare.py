"""The broker entities RPC uses, declared from the topology so that a bare broker works too."""

from __future__ import annotations

import amqp

from kitty_tasks.core.topology import (
    DLX_EXCHANGE,
    DLX_UNROUTED_EXCHANGE,
    RPC_EXCHANGE,
    TOPOLOGY,
    dead_letter_arguments,
    dlq_name,
)

__all__ = ["declare_exchanges", "declare_service_queue"]


def declare_exchanges(channel: amqp.Channel, *names: str) -> None:
    """Declare the topology's exchanges ``names``; identical re-declares are no-ops."""
    for name in names:
        spec = TOPOLOGY.exchange(name)
        channel.exchange_declare(
            spec.name, spec.type, durable=spec.durable, auto_delete=False, arguments=spec.arguments
        )


def declare_service_queue(channel: amqp.Channel, service: str) -> None:
    """Declare ``service``'s request queue bound to ``kitty.rpc``, and its DLQ bound to ``dlx``."""
    declare_exchanges(channel, RPC_EXCHANGE, DLX_UNROUTED_EXCHANGE, DLX_EXCHANGE)
    channel.queue_declare(
        service, durable=True, auto_delete=False, arguments=dead_letter_arguments(service)
    )
    channel.queue_bind(service, RPC_EXCHANGE, service)
    dlq = dlq_name(service)
    channel.queue_declare(dlq, durable=True, auto_delete=False)
    channel.queue_bind(dlq, DLX_EXCHANGE, service)
