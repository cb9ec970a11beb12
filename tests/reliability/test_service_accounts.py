"""Issue 16: the accounts of `kitty-tasks access apply` on a real permission system."""

from __future__ import annotations

import json
import secrets
import uuid
from pathlib import Path
from typing import Any

import amqp
import pytest
from click.testing import CliRunner, Result
from kombu import Connection, Consumer, Queue

from events import Event, EventBus
from kitty_tasks.core.access import ACCESS, password_variable
from kitty_tasks.core.topology import (
    DLX_EXCHANGE,
    EVENTS_EXCHANGE,
    H_ORIGINAL_QUEUE,
    NOTIFICATIONS,
    RESEARCH_TASKS,
    dlq_name,
)
from kitty_tasks.ops.cli import main
from tests.reliability.helpers import WorkerProcess, queue_counts, read_ids
from tests.reliability.node import RabbitNode, wait_for
from tests.reliability.workerapp import FLAKY_TASK, RECORD_TASK, make_app

#: An admin's queue bound to "#" on kitty.events: counts what the broker routed.
EVERY_EVENT = "check.every.event"

NODE_MANAGEMENT = True
#: Seconds a condition on the broker gets (a loaded 2-core machine).
WAIT = 30.0


@pytest.fixture(scope="module")
def passwords() -> dict[str, str]:
    """A fresh random password per service, as `access apply` reads them: from the environment."""
    return {password_variable(e.service): secrets.token_hex(12) for e in ACCESS}


def management_url(node: RabbitNode) -> str:
    return f"http://127.0.0.1:{node.management_port}"


def kitty(node: RabbitNode, url: str, env: dict[str, str], *args: str) -> Result:
    """Run the `kitty-tasks` CLI against ``node`` as ``url``'s user."""
    return CliRunner().invoke(
        main, ["--url", url, "--management-url", management_url(node), *args], env=env
    )


@pytest.fixture
def accounts(rabbit_node: RabbitNode, node_url: str, passwords: dict[str, str]) -> str:
    """``node_url`` (the admin's) with every service account applied to its vhost."""
    wait_for(
        lambda: kitty(rabbit_node, node_url, passwords, "access", "verify").exit_code in (0, 1),
        timeout=WAIT,
        what="management API up",
    )
    result = kitty(rabbit_node, node_url, passwords, "access", "apply")
    assert result.exit_code == 0, result.output
    for password in passwords.values():
        assert password not in result.output
    return node_url


def url_of(node: RabbitNode, admin_url: str, passwords: dict[str, str], service: str) -> str:
    """AMQP URL of ``service``'s account on ``admin_url``'s vhost."""
    vhost = admin_url.rsplit("/", 1)[1]
    return node.url(service, passwords[password_variable(service)], vhost)


def test_fabrication_publishes_its_own_events_and_is_refused_others(
    rabbit_node: RabbitNode, accounts: str, passwords: dict[str, str]
) -> None:
    """Guarantee: topic permissions let fabrication publish fabrication.# only."""
    # Given the fabrication account from `access apply`, and an admin's queue bound to every
    # event (audit.events is a stream, whose length AMQP does not report)
    fabrication = url_of(rabbit_node, accounts, passwords, "fabrication")
    with Connection(accounts) as admin:
        admin.default_channel.queue_declare(EVERY_EVENT, durable=False, auto_delete=False)
        admin.default_channel.queue_bind(EVERY_EVENT, EVENTS_EXCHANGE, "#")
    with EventBus(fabrication, source="fabrication-service", declare=False) as bus:
        # When it publishes its own event, Then the broker confirms and routes it
        event = bus.publish("fabrication.print.started", {"job_id": "print_1"})
        assert event.event_id
        wait_for(lambda: queue_counts(accounts, EVERY_EVENT)[0] == 1, timeout=WAIT, what="routed")
        # When it publishes another service's event, Then the broker refuses it
        with pytest.raises(Exception, match="ACCESS_REFUSED") as refused:
            bus.publish("cad.model.generated", {"model_id": "m1"})
    assert "cad.model.generated" in str(refused.value)
    # And nothing of it was delivered
    assert queue_counts(accounts, EVERY_EVENT)[0] == 1
    print(f"fabrication: fabrication.print.started confirmed; cad.model.generated: {refused.value}")


def test_notifications_cannot_consume_research_tasks(
    rabbit_node: RabbitNode, accounts: str, passwords: dict[str, str]
) -> None:
    """Guarantee: a service reads only its own queues."""
    notifications = url_of(rabbit_node, accounts, passwords, "notifications")
    with Connection(notifications) as conn:
        # Its own queue: consuming works
        own = Consumer(conn, [Queue(NOTIFICATIONS, no_declare=True)], auto_declare=False)
        own.consume()
        own.cancel()
        # Another service's queue: ACCESS_REFUSED, naming the user
        other = Consumer(conn, [Queue(RESEARCH_TASKS, no_declare=True)], auto_declare=False)
        with pytest.raises(amqp.exceptions.AccessRefused, match="ACCESS_REFUSED") as caught:
            other.consume()
    assert "notifications" in str(caught.value)
    assert RESEARCH_TASKS in str(caught.value)


@pytest.mark.parametrize("operation", ["purge", "delete"])
def test_research_worker_cannot_purge_or_delete_its_dlq(
    rabbit_node: RabbitNode, accounts: str, passwords: dict[str, str], operation: str
) -> None:
    """Guarantee: dead letters are the operator's; a worker cannot destroy them."""
    dlq = dlq_name(RESEARCH_TASKS)
    with Connection(accounts) as admin:
        admin.default_channel.basic_publish(amqp.Message(b"{}"), DLX_EXCHANGE, RESEARCH_TASKS)
    wait_for(lambda: queue_counts(accounts, dlq)[0] == 1, timeout=WAIT, what="dead letter")
    research = url_of(rabbit_node, accounts, passwords, "research-worker")
    with Connection(research) as conn:
        channel = conn.channel()
        destroy = channel.queue_purge if operation == "purge" else channel.queue_delete
        with pytest.raises(amqp.exceptions.AccessRefused, match="ACCESS_REFUSED"):
            destroy(dlq)
    assert queue_counts(accounts, dlq)[0] == 1


def test_operator_reads_and_replays_a_dlq(
    rabbit_node: RabbitNode, accounts: str, passwords: dict[str, str]
) -> None:
    """Guarantee: the operator account can list and replay dead letters."""
    # Given a dead letter of research.tasks
    dlq = dlq_name(RESEARCH_TASKS)
    with Connection(accounts) as admin:
        message = amqp.Message(
            b'{"x": 1}',
            content_type="application/json",
            message_id=str(uuid.uuid4()),
            application_headers={H_ORIGINAL_QUEUE: RESEARCH_TASKS},
        )
        admin.default_channel.basic_publish(message, DLX_EXCHANGE, RESEARCH_TASKS)
    wait_for(lambda: queue_counts(accounts, dlq)[0] == 1, timeout=WAIT, what="dead letter")
    operator = url_of(rabbit_node, accounts, passwords, "operator")
    # When the operator peeks and replays it with the CLI
    shown = kitty(rabbit_node, operator, {}, "dlq", "show", dlq, "--json")
    assert shown.exit_code == 0, shown.output
    replayed = kitty(rabbit_node, operator, {}, "dlq", "replay", dlq, "--json")
    assert replayed.exit_code == 0, replayed.output
    # Then it is back in research.tasks and the DLQ is empty
    assert queue_counts(accounts, RESEARCH_TASKS)[0] == 1
    assert queue_counts(accounts, dlq)[0] == 0


def test_a_celery_worker_runs_as_research_worker(
    rabbit_node: RabbitNode, accounts: str, passwords: dict[str, str], tmp_path: Path
) -> None:
    """Guarantee: the derived permissions are enough for a real worker: tasks, retries, control."""
    # Given a real worker logged in as research-worker, node name research@host
    research = url_of(rabbit_node, accounts, passwords, "research-worker")
    worker = WorkerProcess(research, tmp_path, node_name=f"research@{uuid.uuid4().hex[:6]}")
    worker.start()
    client = make_app(accounts)
    try:
        # When tasks are sent: one that succeeds and one that fails twice (retried by the ladder)
        record = client.send_task(RECORD_TASK, args=[1])
        flaky = client.send_task(FLAKY_TASK, args=[2])
        # Then both take effect: consume, ack, retry copies through kitty.delay.* all allowed
        wait_for(
            lambda: {record.id, flaky.id} <= set(read_ids(tmp_path, "effects")),
            timeout=WAIT * 2,
            what="tasks done",
            progress=lambda: sum(read_ids(tmp_path, "runs").values()),
        )
        # And remote control reaches it (pidbox queue, replies on reply.celery.pidbox)
        replies = client.control.ping(timeout=5.0)
        assert any(name.startswith("research@") for reply in replies for name in reply), replies
        assert worker.alive, worker.log_tail()
        assert "ACCESS_REFUSED" not in worker.log_path.read_text()
    finally:
        worker.stop()
        client.close()


def test_verify_source_dead_letters_an_event_claiming_another_source(
    rabbit_node: RabbitNode, accounts: str, passwords: dict[str, str]
) -> None:
    """Guarantee: with verify_source, only the broker user of a source can speak for it."""
    # Given a subscriber that verifies sources (run by the admin) and the fabrication account
    handled: list[Event] = []
    subscriber = EventBus(accounts, source="audit-check", verify_source=True).connect()
    subscription = subscriber.subscribe("fabrication.#", handled.append)
    subscriber.start_consuming(block=False)
    fabrication = url_of(rabbit_node, accounts, passwords, "fabrication")
    try:
        # When fabrication publishes one event as "cad-service" and one as itself
        with EventBus(fabrication, source="cad-service", declare=False) as forger:
            forged = forger.publish("fabrication.print.started", {"job_id": "forged"})
        with EventBus(fabrication, source="fabrication-service", declare=False) as honest:
            genuine = honest.publish("fabrication.print.started", {"job_id": "genuine"})
        # Then the genuine one reaches the handler, with its publisher
        wait_for(lambda: handled, timeout=WAIT, what="genuine event handled")
        # And the forged one is in the subscription's DLQ with the reason, never handled
        wait_for(
            lambda: queue_counts(accounts, subscription.dead_letter_queue)[0] == 1,
            timeout=WAIT,
            what="forged event dead-lettered",
        )
    finally:
        subscriber.disconnect()
    assert [(e.event_id, e.publisher) for e in handled] == [(genuine.event_id, "fabrication")]
    headers = dead_letter_headers(accounts, subscription.dead_letter_queue)
    assert headers["x-kitty-error-type"] == "UnverifiedSource"
    assert "cad-service" in headers["x-kitty-error-message"]
    assert "'fabrication'" in headers["x-kitty-error-message"]
    assert forged.event_id not in {e.event_id for e in handled}
    print(f"verify_source: {headers['x-kitty-error-message']}")


def dead_letter_headers(url: str, queue: str) -> dict[str, Any]:
    """Headers of the first message of ``queue`` (left in place)."""
    with Connection(url) as conn:
        channel = conn.channel()
        message = channel.basic_get(queue, no_ack=False)
        assert message is not None
        headers = dict(message.properties.get("application_headers") or {})
        channel.basic_reject(message.delivery_tag, requeue=True)
    return headers


def test_access_verify_reports_a_hand_made_change(
    rabbit_node: RabbitNode, accounts: str, passwords: dict[str, str]
) -> None:
    """Guarantee: `access verify` exits 1 and names the drift; 0 when the broker matches."""
    # Given the applied accounts, verify finds nothing
    clean = kitty(rabbit_node, accounts, {}, "access", "verify")
    assert clean.exit_code == 0, clean.output
    # When someone widens fabrication's write permission by hand
    vhost = accounts.rsplit("/", 1)[1]
    rabbit_node.ctl("set_permissions", "-p", vhost, "fabrication", "^$", ".*", "^$")
    # Then verify names the user and the permission, and exits 1
    drift = kitty(rabbit_node, accounts, {}, "access", "verify", "--json")
    assert drift.exit_code == 1, drift.output
    found = json.loads(drift.stdout)
    assert [(d["entity"], d["name"]) for d in found] == [("permissions", "fabrication")]
    assert "write is '.*'" in found[0]["detail"]
    # And applying again repairs it
    assert kitty(rabbit_node, accounts, passwords, "access", "apply").exit_code == 0
    assert kitty(rabbit_node, accounts, {}, "access", "verify").exit_code == 0
