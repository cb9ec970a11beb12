"""What RabbitMQ 4.3 denies by default is denied on the 4.x test broker, and we do without it."""

from __future__ import annotations

import contextlib
import urllib.parse
import uuid
from typing import Any

import amqp
import pytest
from kombu import Connection

from events import EventBus
from kitty_tasks.core.errors import ConfigurationError
from kitty_tasks.core.management import ManagementClient, ManagementError
from kitty_tasks.core.topology import CAD_TASKS
from tests.helpers import CeleryWorker, wait_for
from tests.integration.test_tasks import TEST_TASKS

pytestmark = pytest.mark.rabbitmq


@pytest.mark.rabbitmq4
def test_global_qos_is_denied_so_the_broker_limits_each_consumer_alone(amqp_url: str):
    with Connection(amqp_url) as connection:
        connection.connect()
        raw: amqp.Connection = connection.connection
        # Given two queues with messages waiting
        setup = raw.channel()
        queues = [f"qos-{uuid.uuid4().hex[:8]}" for _ in range(2)]
        for queue in queues:
            setup.queue_declare(queue, durable=True, auto_delete=False)
            setup.confirm_select()
            for _ in range(3):
                setup.basic_publish(amqp.Message("m"), "", queue)
        # When one channel asks for a global prefetch of 1 and consumes both
        channel = raw.channel()
        channel.basic_qos(0, 1, True)
        delivered: list[str] = []
        for queue in queues:
            channel.basic_consume(
                queue, callback=lambda m: delivered.append(m.delivery_info["routing_key"])
            )

        def both_delivered() -> bool:
            with contextlib.suppress(TimeoutError):
                raw.drain_events(timeout=0.2)
            return sorted(delivered) == sorted(queues)

        # Then each consumer gets one: the broker refused the global limit (a broker that
        # permits it, as 3.x and a misconfigured 4.x do, delivers one message in all)
        wait_for(both_delivered, 10, 0, what="one delivery per consumer")
        channel.close()
        for queue in queues:
            setup.queue_delete(queue)


@pytest.mark.rabbitmq4
def test_transient_non_exclusive_queues_are_refused(amqp_url: str):
    with Connection(amqp_url) as connection:
        channel = connection.channel()
        with pytest.raises(amqp.exceptions.InternalError, match="transient_nonexcl_queues"):
            channel.queue_declare(f"transient-{uuid.uuid4().hex[:8]}", durable=False)


@pytest.mark.rabbitmq4
def test_a_transient_event_queue_is_refused_with_the_reason(amqp_url: str):
    # When a subscriber asks for a non-durable queue on a broker that denies them
    refused = pytest.raises(ConfigurationError, match=r"refuses transient .* declare .* durable")
    with EventBus(amqp_url, source="compat-test") as bus, refused:
        bus.declare_queue(f"transient-{uuid.uuid4().hex[:8]}.events", durable=False)


@pytest.mark.rabbitmq4
def test_celery_workers_ask_rabbitmq4_for_per_consumer_prefetch_never_global(
    amqp_url: str, test_vhost: str, management_client: ManagementClient
):
    with CeleryWorker(amqp_url, [CAD_TASKS], include=[TEST_TASKS]):
        # When a worker consumes its queue
        def consumer_and_channel() -> tuple[dict[str, Any], dict[str, Any]] | None:
            # The API lists a consumer before its channel's stats arrive: wait for both
            # (until then its channel_details are an empty list).
            listed = management_client.get("consumers/" + management_client.quote(test_vhost))
            mine = [c for c in listed or [] if c["queue"]["name"] == CAD_TASKS]
            if len(mine) != 1 or not mine[0]["channel_details"]:
                return None
            name = urllib.parse.quote(mine[0]["channel_details"]["name"], safe="")
            try:
                return mine[0], management_client.get("channels/" + name)
            except ManagementError:
                return None

        consumer, channel = wait_for(consumer_and_channel, 30, what="the worker's consumer")
    # Then its prefetch is the consumer's own (4.3 denies global QoS; Kombu 5.7 knows,
    # tests/unit/test_worker_qos.py checks it)
    assert consumer["prefetch_count"] == 1
    assert not channel.get("global_prefetch_count")
