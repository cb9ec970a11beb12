"""The committed definitions files are exactly what the topology code exports."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from kitty_tasks.core.topology import (
    AUDIT_EVENTS,
    DELIVERY_LIMIT,
    EVENT_QUEUES,
    TASK_QUEUES,
    QueueType,
    TopologyProfile,
    build_topology,
    definitions_json,
    dlq_name,
)
from kitty_tasks.ops.cli import main

ROOT = Path(__file__).resolve().parents[2]
SINGLE = ROOT / "compose/rabbitmq/definitions.json"
CLUSTER = ROOT / "compose/rabbitmq/definitions.quorum.json"
REGENERATE = {
    SINGLE: "kitty-tasks topology export",
    CLUSTER: "kitty-tasks topology export --profile quorum",
}


@pytest.mark.parametrize(
    ("path", "profile"), [(SINGLE, TopologyProfile.CLASSIC), (CLUSTER, TopologyProfile.QUORUM)]
)
def test_committed_definitions_match_the_code(path: Path, profile: TopologyProfile) -> None:
    # Given the topology in kitty_tasks/core/topology.py
    expected = definitions_json(build_topology(profile=profile))
    # When the committed file is read
    actual = path.read_text()
    # Then it is byte for byte what the code exports
    assert actual == expected, f"{path.name} drifted from the code; run: {REGENERATE[path]}"


@pytest.mark.parametrize("path", [SINGLE, CLUSTER])
def test_definitions_hold_no_users_or_passwords(path: Path) -> None:
    definitions = json.loads(path.read_text())
    assert "users" not in definitions
    assert "permissions" not in definitions
    assert "guest" not in path.read_text()


def test_quorum_definitions_make_every_queue_quorum_and_dead_letter_at_least_once() -> None:
    queues = {q["name"]: q["arguments"] for q in json.loads(CLUSTER.read_text())["queues"]}
    # The audit log stays a stream: an append-only log, replicated across the cluster too.
    assert queues.pop(AUDIT_EVENTS)["x-queue-type"] == "stream"
    for name, arguments in queues.items():
        assert arguments["x-queue-type"] == "quorum", name
        # Quorum queues refuse x-max-priority: RabbitMQ 4.0 gives them two levels unasked.
        assert "x-max-priority" not in arguments, name
        if "x-dead-letter-exchange" in arguments:
            assert arguments["x-dead-letter-strategy"] == "at-least-once", name
            assert arguments["x-overflow"] == "reject-publish", name
    for name in (*TASK_QUEUES, *EVENT_QUEUES):
        assert queues[name]["x-delivery-limit"] == DELIVERY_LIMIT, name
        assert queues[name]["x-dead-letter-routing-key"] == name
        assert queues[dlq_name(name)]["x-queue-type"] == "quorum"


def test_the_classic_profile_keeps_ten_priorities_on_task_queues() -> None:
    queues = {q["name"]: q["arguments"] for q in json.loads(SINGLE.read_text())["queues"]}
    for name in TASK_QUEUES:
        assert queues[name]["x-max-priority"] == 10, name


def test_single_node_definitions_are_classic_but_the_audit_stream() -> None:
    text = SINGLE.read_text()
    assert "quorum" not in text
    assert text.count('"x-queue-type": "stream"') == 1


@pytest.mark.parametrize("profile", ["classic", "quorum"])
def test_export_command_writes_the_profile(tmp_path: Path, profile: str) -> None:
    out = tmp_path / "definitions.json"
    result = CliRunner().invoke(main, ["topology", "export", "--profile", profile, "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert out.read_text() == definitions_json(build_topology(profile=TopologyProfile(profile)))


def test_export_command_refuses_an_unknown_profile() -> None:
    result = CliRunner().invoke(main, ["topology", "export", "--profile", "mirrored", "-o", "-"])
    assert result.exit_code == 2
    assert "mirrored" in result.output


@pytest.mark.parametrize("queue_type", ["classic", "quorum"])
def test_export_command_writes_the_variant(tmp_path: Path, queue_type: str) -> None:
    # When the CLI exports with --queue-type
    out = tmp_path / "definitions.json"
    result = CliRunner().invoke(
        main, ["topology", "export", "--queue-type", queue_type, "-o", str(out)]
    )
    # Then it wrote the same text as the code's variant
    assert result.exit_code == 0, result.output
    expected = build_topology(event_queue_type=QueueType(queue_type))
    assert out.read_text() == definitions_json(expected)


def test_export_command_refuses_an_unknown_queue_type() -> None:
    result = CliRunner().invoke(main, ["topology", "export", "--queue-type", "stream", "-o", "-"])
    assert result.exit_code == 2
    assert "stream" in result.output
