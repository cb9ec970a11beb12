"""Flower's Broker tab lists the queues of the platform's vhost only, also for the vhost "/"."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import pytest
from flower.utils import broker as flower_broker
from flower.utils.broker import Broker
from kombu import Connection

from kitty_tasks.ops.flower import default_broker_api
from kitty_tasks.ops.flower_app import install
from tests.conftest import MANAGEMENT_URL, url_for_vhost

pytestmark = pytest.mark.rabbitmq


def _listed(broker_url: str, names: list[str]) -> list[dict[str, Any]]:
    """What Flower's Broker tab shows for ``names``, asked as Flower asks."""
    broker = Broker(broker_url, http_api=default_broker_api(MANAGEMENT_URL))
    listed: list[dict[str, Any]] = asyncio.run(broker.queues(names))
    return listed


@pytest.mark.parametrize("vhost", ["/", "own"])
def test_the_broker_tab_lists_one_vhost(
    vhost: str, test_vhost: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a queue of the same name in the platform's vhost and in another one
    name = f"flower-test-{uuid.uuid4().hex[:8]}"
    platform = url_for_vhost("/" if vhost == "/" else test_vhost)
    other = url_for_vhost(test_vhost if vhost == "/" else "/")
    monkeypatch.setattr(flower_broker, "RabbitMQ", flower_broker.RabbitMQ)  # undone afterwards
    install()
    with Connection(platform) as here, Connection(other) as there:
        for connection in (here, there):
            connection.default_channel.queue_declare(name, durable=True, auto_delete=False)
        try:
            # When Flower lists the platform's queues (its broker URL as Celery renders it)
            listed = _listed(here.as_uri(include_password=True), [name])
        finally:
            for connection in (here, there):
                connection.default_channel.queue_delete(name)
    # Then it shows the queue once, from the platform's vhost
    assert [q["vhost"] for q in listed] == ["/" if vhost == "/" else test_vhost]
