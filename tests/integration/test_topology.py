"""`kitty-tasks topology apply|verify` against a vhost of the test's own."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
from click.testing import CliRunner
from kombu import Connection

from kitty_tasks.core.management import ManagementClient
from kitty_tasks.core.topology import CAD_TASKS, TOPOLOGY
from kitty_tasks.ops.cli import main
from tests.conftest import BASE_URL, MANAGEMENT_URL, url_for_vhost

pytestmark = pytest.mark.rabbitmq


@pytest.fixture
def empty_vhost(test_vhost: str, management_client: ManagementClient) -> Iterator[str]:
    """A brand-new vhost with nothing declared in it."""
    vhost = f"kitty-topology-{uuid.uuid4().hex[:8]}"
    management_client.create_vhost(vhost, "guest")
    yield vhost
    management_client.delete_vhost(vhost)


def run_cli(*args: str, vhost: str):
    """Invoke ``kitty-tasks`` against ``vhost``."""
    return CliRunner().invoke(
        main, ["--url", url_for_vhost(vhost), "--management-url", MANAGEMENT_URL, *args]
    )


def test_verify_lists_everything_missing_in_an_empty_vhost(empty_vhost: str):
    result = run_cli("topology", "verify", vhost=empty_vhost)
    assert result.exit_code == 1
    assert f"missing queue {CAD_TASKS}" in result.output
    assert "missing exchange kitty.events" in result.output


def test_verify_passes_after_apply_and_names_a_redeclared_queue(empty_vhost: str):
    # Given the topology applied
    applied = run_cli("topology", "apply", vhost=empty_vhost)
    assert applied.exit_code == 0, applied.output
    verified = run_cli("topology", "verify", vhost=empty_vhost)
    assert verified.exit_code == 0, verified.output
    assert "matches the topology" in verified.output

    # When cad.tasks is deleted and redeclared with other arguments
    with Connection(url_for_vhost(empty_vhost)) as connection:
        channel = connection.default_channel
        channel.queue_delete(CAD_TASKS)
        channel.queue_declare(CAD_TASKS, durable=True, arguments={"x-max-priority": 5})

    # Then verify fails and names the queue and the differing arguments
    result = run_cli("topology", "verify", vhost=empty_vhost)
    assert result.exit_code == 1
    assert f"inequivalent queue {CAD_TASKS}" in result.output
    assert "x-max-priority=5 (code: 10)" in result.output
    assert "x-max-length=None (code: 5000)" in result.output
    # (and its binding went with the deleted queue)
    assert f"missing binding kitty.tasks -> {CAD_TASKS}" in result.output


def test_apply_is_idempotent(empty_vhost: str):
    for _ in range(2):
        assert run_cli("topology", "apply", vhost=empty_vhost).exit_code == 0
    client = ManagementClient.from_urls(MANAGEMENT_URL, BASE_URL)
    names = {q["name"] for q in client.queues(empty_vhost)}
    assert names == {q.name for q in TOPOLOGY.queues}


def test_apply_against_an_unreachable_broker_is_a_clear_error():
    result = CliRunner().invoke(
        main, ["--url", "amqp://guest:guest@127.0.0.1:1//", "topology", "apply"]
    )
    assert result.exit_code == 1
    assert "cannot apply the topology" in result.output
