"""Celery workers never ask RabbitMQ 4.x for global QoS (which 4.3 denies by default).

Celery asks for global QoS exactly when Kombu says the broker's QoS semantics differ from
the AMQP spec; Kombu 5.7 says so for RabbitMQ 3.3-3.x only. A Kombu or Celery release
that changed this would make workers ask 4.x for global QoS: these tests fail then.
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from celery.worker.consumer.tasks import Tasks
from kombu.transport.pyamqp import Transport


def semantics_match_spec(version: str) -> bool:
    """Kombu's answer for a RabbitMQ of ``version``."""
    connection = SimpleNamespace(server_properties={"product": "RabbitMQ", "version": version})
    return bool(Transport.qos_semantics_matches_spec(None, connection))  # type: ignore[arg-type]


def celery_asks_global(version: str) -> bool:
    """Celery's task step's choice for a worker on RabbitMQ ``version``, classic queues."""
    c = SimpleNamespace(
        connection=SimpleNamespace(qos_semantics_matches_spec=semantics_match_spec(version)),
        app=SimpleNamespace(conf=SimpleNamespace(worker_detect_quorum_queues=False)),
    )
    return bool(Tasks.qos_global(None, c))  # type: ignore[arg-type]


@pytest.mark.parametrize("version", ["4.0.5", "4.1.0", "4.3.0"])
def test_celery_asks_rabbitmq4_for_per_consumer_prefetch(version: str) -> None:
    assert celery_asks_global(version) is False


def test_celery_keeps_global_qos_on_rabbitmq3() -> None:
    # There it lets Celery raise the prefetch while it holds a task with an ETA.
    assert celery_asks_global("3.10.8") is True
