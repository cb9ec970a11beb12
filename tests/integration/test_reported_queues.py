"""Health and the exporter report the platform's queues only, so label values stay bounded."""

from __future__ import annotations

import json
import uuid

import pytest
from kombu import Connection
from prometheus_client import CollectorRegistry, generate_latest

from kitty_tasks.core.connection import vhost_of
from kitty_tasks.core.management import ManagementClient
from kitty_tasks.core.topology import subscriber_queue_name
from kitty_tasks.ops.exporter import BrokerCollector
from rpc.declare import declare_service_queue
from tests.integration.ops_support import cli

pytestmark = pytest.mark.rabbitmq


@pytest.fixture
def queues(ops_url: str) -> dict[str, str]:
    """A stray uuid-named queue (as a reply or result queue is), a subscriber's and an RPC one."""
    names = {
        "stray": str(uuid.uuid4()),
        "subscriber": subscriber_queue_name("audit-service", "fabrication.print.#"),
        "rpc": "math.rpc",
    }
    with Connection(ops_url) as connection:
        channel = connection.channel()
        channel.queue_declare(names["stray"], durable=True, auto_delete=False)
        channel.queue_declare(names["subscriber"], durable=True, auto_delete=False)
        declare_service_queue(connection.connection.channel(), names["rpc"])
    return names


def test_health_lists_platform_queues_but_not_a_stray_one(
    ops_url: str, queues: dict[str, str]
) -> None:
    report = json.loads(cli(ops_url, "health", "--json").stdout)
    kinds = {q["name"]: q["kind"] for q in report["queues"]}
    assert queues["stray"] not in kinds
    assert kinds[queues["subscriber"]] == "event"
    assert kinds["math.rpc"] == "rpc"
    assert kinds["math.rpc.dlq"] == "dlq"
    assert kinds["research.tasks"] == "task"
    assert kinds["kitty.delay.1s"] == "delay"


def test_the_exporter_has_no_label_for_a_stray_queue(
    ops_url: str, queues: dict[str, str], management_client: ManagementClient
) -> None:
    registry = CollectorRegistry()
    registry.register(BrokerCollector(ops_url, management_client, vhost_of(ops_url)))
    text = generate_latest(registry).decode()
    assert queues["stray"] not in text
    assert f'kitty_queue_depth{{queue="{queues["subscriber"]}"}}' in text
    assert 'kitty_queue_depth{queue="math.rpc"}' in text
    assert 'kitty_queue_depth{queue="research.tasks"}' in text
    assert 'kitty_dlq_depth{queue="math.rpc.dlq"}' in text
