"""The committed definitions files are exactly what the topology code exports."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from kitty_tasks.core.topology import (
    AUDIT_EVENTS,
    EVENT_QUEUES,
    TASK_QUEUES,
    QueueType,
    build_topology,
    definitions_json,
)
from kitty_tasks.ops.cli import main

ROOT = Path(__file__).resolve().parents[2]
SINGLE = ROOT / "compose/rabbitmq/definitions.json"
CLUSTER = ROOT / "compose/rabbitmq/definitions.cluster.json"
REGENERATE = {
    SINGLE: "kitty-tasks topology export",
    CLUSTER: "kitty-tasks topology export --queue-type quorum -o " + str(CLUSTER.relative_to(ROOT)),
}


@pytest.mark.parametrize(
    ("path", "queue_type"), [(SINGLE, QueueType.CLASSIC), (CLUSTER, QueueType.QUORUM)]
)
def test_committed_definitions_match_the_code(path: Path, queue_type: QueueType) -> None:
    # Given the topology in kitty_tasks/core/topology.py
    expected = definitions_json(build_topology(event_queue_type=queue_type))
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


def test_cluster_definitions_make_event_queues_quorum_and_audit_a_stream() -> None:
    queues = {q["name"]: q["arguments"] for q in json.loads(CLUSTER.read_text())["queues"]}
    assert queues[AUDIT_EVENTS]["x-queue-type"] == "stream"
    for name in EVENT_QUEUES:
        assert queues[name]["x-queue-type"] == "quorum", name
    for name in TASK_QUEUES:
        # Priorities need classic queues.
        assert "x-queue-type" not in queues[name], name
        assert queues[name]["x-max-priority"] == 10


def test_single_node_definitions_are_classic_but_the_audit_stream() -> None:
    text = SINGLE.read_text()
    assert "quorum" not in text
    assert text.count('"x-queue-type": "stream"') == 1


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
