"""The quorum topology profile on RabbitMQ 4.x: priorities, the retry ladder, DLQs, poison."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from kombu import Connection

from kitty_tasks.core.declarer import apply_topology, broker_version
from kitty_tasks.core.errors import TopologyError
from kitty_tasks.core.management import ManagementClient
from kitty_tasks.core.topology import (
    DELIVERY_LIMIT,
    H_ATTEMPTS,
    H_ERROR_TYPE,
    H_ORIGINAL_QUEUE,
    RESEARCH_TASKS,
    TopologyProfile,
    build_topology,
    dlq_name,
)
from kitty_tasks.ops.cli import main
from tests.conftest import MANAGEMENT_URL, url_for_vhost
from tests.helpers import CeleryWorker, queue_counts, wait_for
from tests.integration import tasks_for_tests
from tests.integration.ops_support import own_vhost
from tests.integration.test_tasks import TEST_TASKS, drain, runs_in

pytestmark = pytest.mark.rabbitmq

QUORUM = build_topology(profile=TopologyProfile.QUORUM)
#: Worker settings: the quorum profile, two retries, and a ladder that waits ~1 s a step.
QUORUM_WORKER_ENV = {
    "KITTY_TOPOLOGY_PROFILE": "quorum",
    "KITTY_MAX_RETRIES": "2",
    "KITTY_RETRY_BACKOFF_BASE": "0.1",
}


@pytest.fixture
def quorum_url(test_vhost: str, management_client: ManagementClient) -> Iterator[str]:
    """A vhost of this test's own with the quorum profile applied."""
    with own_vhost(management_client, QUORUM) as url:
        yield url


def confirmed(url: str) -> Connection:
    """A connection whose publishes return once the broker confirmed them (queued)."""
    return Connection(url, transport_options={"confirm_publish": True})


def send(url: str, task: Any, *args: Any, **options: Any) -> None:
    """Publish ``task`` into ``url``'s vhost, confirmed, without declaring anything there.

    The app under test was configured with the classic profile: declaring its queues in a
    quorum vhost would be refused, and no result is awaited across vhosts.
    """
    with task.app.connection_for_write(url) as connection:
        task.apply_async(args, connection=connection, declare=[], ignore_result=True, **options)


@pytest.mark.rabbitmq4
def test_topology_verify_accepts_the_quorum_profile_and_names_it_to_the_classic_one(
    quorum_url: str,
):
    vhost = quorum_url.rsplit("/", 1)[1]

    def verify(*args: str) -> Any:
        return CliRunner().invoke(
            main, ["--url", url_for_vhost(vhost), "--management-url", MANAGEMENT_URL,
                   "topology", "verify", *args],
        )  # fmt: skip

    # When the quorum vhost is verified against its own profile, it matches
    matched = verify("--profile", "quorum")
    assert matched.exit_code == 0, matched.output
    # And against the classic profile each task queue's type and priority differ
    differs = verify("--profile", "classic")
    assert differs.exit_code == 1
    assert f"inequivalent queue {RESEARCH_TASKS}: " in differs.output
    assert "x-queue-type='quorum' (code: None)" in differs.output
    assert "x-max-priority=None (code: 10)" in differs.output


def test_the_quorum_profile_is_refused_clearly_on_a_3x_broker(amqp_url: str):
    with Connection(amqp_url) as connection:
        connection.connect()
        version = broker_version(connection)
        if version is None or version >= (4, 0):
            pytest.skip(f"the broker is RabbitMQ {version}: the profile is for it")
        # When the quorum profile is applied to RabbitMQ 3.x
        with pytest.raises(TopologyError, match=r"needs RabbitMQ 4\.0 or later") as raised:
            apply_topology(connection, QUORUM)
    # Then the error names the broker's version and the way out
    assert "KITTY_TOPOLOGY_PROFILE=classic" in str(raised.value)


@pytest.mark.rabbitmq4
def test_queues_are_quorum_and_dead_letter_at_least_once(
    quorum_url: str, management_client: ManagementClient
):
    vhost = quorum_url.rsplit("/", 1)[1]
    live = {q["name"]: q for q in management_client.queues(vhost)}
    for spec in QUORUM.queues:
        # The audit log stays a stream in this profile too (it replicates as streams do).
        assert live[spec.name]["type"] == ("stream" if spec.is_stream else "quorum"), spec.name
        if "x-dead-letter-exchange" in spec.arguments:
            arguments = live[spec.name]["arguments"]
            assert arguments["x-dead-letter-strategy"] == "at-least-once", spec.name
            assert arguments["x-overflow"] == "reject-publish", spec.name


@pytest.mark.rabbitmq4
def test_priorities_are_honoured_within_the_brokers_two_levels(quorum_url: str):
    # Given normal tasks (0-4, or none) queued before high ones (5-10)
    sent = [("n0", 0), ("n4", 4), ("none", None), ("h5", 5), ("h10", 10)]
    with confirmed(quorum_url) as connection:
        producer = connection.Producer()
        for body, priority in sent:
            options = {} if priority is None else {"priority": priority}
            producer.publish(body, routing_key=RESEARCH_TASKS, retry=False, **options)
    # When they are taken from the quorum task queue
    taken = [m.body for m in drain(quorum_url, RESEARCH_TASKS)]
    # Then the high ones come first, in the order sent (10 is no higher than 5 on 4.0),
    # and the normal ones after them, 4 among the normal ones
    assert taken == ["h5", "h10", "n0", "n4", "none"]


@pytest.mark.rabbitmq4
def test_a_flaky_task_is_retried_through_the_ladder_and_succeeds(quorum_url: str, tmp_path: Path):
    log = tmp_path / "runs.log"
    with CeleryWorker(quorum_url, [RESEARCH_TASKS], include=[TEST_TASKS], env=QUORUM_WORKER_ENV):
        # Given a task that fails twice, then succeeds
        send(quorum_url, tasks_for_tests.flaky, str(log), 2)
        # Then it ran three times, each retry counted by the platform's header
        wait_for(lambda: len(runs_in(log)) == 3, 60, what="three runs of the flaky task")
        wait_for(lambda: queue_counts(quorum_url, RESEARCH_TASKS)[0] == 0, 30)
    assert [retries for _, retries in runs_in(log)] == [0, 1, 2]
    assert queue_counts(quorum_url, dlq_name(RESEARCH_TASKS))[0] == 0


@pytest.mark.rabbitmq4
def test_an_always_failing_task_ends_in_its_quorum_dlq_with_the_reason(
    quorum_url: str, tmp_path: Path
):
    log = tmp_path / "runs.log"
    dlq = dlq_name(RESEARCH_TASKS)
    with CeleryWorker(quorum_url, [RESEARCH_TASKS], include=[TEST_TASKS], env=QUORUM_WORKER_ENV):
        # Given a task that always fails, with two retries allowed
        send(quorum_url, tasks_for_tests.always_fails, str(log))
        # Then after its third run it is in the quorum DLQ
        wait_for(lambda: queue_counts(quorum_url, dlq)[0] == 1, 60, what="the dead letter")
    [dead] = drain(quorum_url, dlq)
    assert len(runs_in(log)) == 3
    assert dead.headers[H_ERROR_TYPE] == "ValueError"
    assert dead.headers[H_ATTEMPTS] == 3
    assert dead.headers[H_ORIGINAL_QUEUE] == RESEARCH_TASKS
    # Attempts are the platform's count: the broker's x-death never saw this message
    assert "x-death" not in dead.headers


@pytest.mark.rabbitmq4
def test_a_poison_message_is_dead_lettered_after_the_delivery_limit(quorum_url: str):
    # Given a message that every consumer gives back (a worker that dies on it, say)
    with confirmed(quorum_url) as connection:
        connection.Producer().publish("poison", routing_key=RESEARCH_TASKS, retry=False)
        channel = connection.channel()
        deliveries = 0
        while (message := channel.basic_get(RESEARCH_TASKS)) is not None:
            deliveries += 1
            channel.basic_reject(message.delivery_tag, requeue=True)
            assert deliveries <= DELIVERY_LIMIT + 1, "the delivery limit did not stop it"
        channel.close()
    # Then the broker stopped redelivering it after the limit, and dead-lettered it
    assert deliveries == DELIVERY_LIMIT + 1
    dlq = dlq_name(RESEARCH_TASKS)
    wait_for(lambda: queue_counts(quorum_url, dlq)[0] == 1, 10, what="the dead letter")
    [dead] = drain(quorum_url, dlq)
    assert dead.body == "poison"
    assert dead.headers["x-first-death-reason"] == "delivery_limit"
    assert dead.headers["x-first-death-queue"] == RESEARCH_TASKS
