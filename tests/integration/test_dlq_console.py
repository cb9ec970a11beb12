"""The DLQ console on the real broker: failing tasks, show, dry run, replay after the fix, purge."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from kombu import Connection

from kitty_tasks.runtime.application import app
from tests.helpers import KITTY_TASKS, ROOT, CeleryWorker, queue_counts, wait_for
from tests.integration.ops_support import cli
from tests.integration.ops_tasks import FAULT_FILE_ENV, RUNS_FILE_ENV, fragile, needs_key

pytestmark = [pytest.mark.rabbitmq]

DLQ = "research.tasks.dlq"


def _show(url: str) -> dict[str, object]:
    result = cli(url, "dlq", "show", DLQ, "--json")
    assert result.exit_code == 0, result.output
    return dict(json.loads(result.stdout))


def _ids(url: str) -> list[str]:
    return [m["id"] for m in _show(url)["messages"]]  # type: ignore[attr-defined]


def _runs(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


@pytest.mark.slow
def test_failing_tasks_are_shown_grouped_replayed_after_the_fix_and_purged(
    ops_url: str, tmp_path: Path
) -> None:
    # Given a research worker whose fault is switched on
    fault = tmp_path / "fault"
    fault.touch()
    runs = tmp_path / "runs.log"
    env = {FAULT_FILE_ENV: str(fault), RUNS_FILE_ENV: str(runs)}
    with CeleryWorker(
        ops_url, ["research.tasks"], concurrency=2, include=["tests.integration.ops_tasks"], env=env
    ):
        # When ten tasks that always fail (and two with a different error) are submitted
        with app.connection_for_write(ops_url) as connection:
            for item in range(10):
                fragile.apply_async((item,), connection=connection)
            for _ in range(2):
                needs_key.apply_async(({},), connection=connection)

        # Then all twelve end in research.tasks.dlq, the ten after their one retry
        wait_for(lambda: queue_counts(ops_url, DLQ)[0] == 12, 60, 0.25, what="12 dead letters")
        assert sorted(_runs(runs)) == sorted([f"fail {i}" for i in range(10)] * 2)

        # And `dlq show` groups them under their error, each decoded
        shown = _show(ops_url)
        assert shown["depth"] == 12
        groups = {g["error_type"]: g for g in shown["groups"]}  # type: ignore[attr-defined]
        assert groups["ValueError"]["count"] == 10
        assert groups["ValueError"]["types"] == {"research.fragile": 10}
        assert groups["KeyError"]["count"] == 2
        fragile_letters = [m for m in shown["messages"] if m["type"] == "research.fragile"]  # type: ignore[attr-defined]
        assert {m["attempts"] for m in fragile_letters} == {2}
        assert {m["original_queue"] for m in fragile_letters} == {"research.tasks"}
        assert all(m["first_failure"] and m["last_failure"] for m in fragile_letters)
        assert all("fault injected" in m["error_message"] for m in fragile_letters)
        table = cli(ops_url, "dlq", "show", DLQ)
        assert table.exit_code == 0
        assert "research.tasks.dlq: 12 dead letter(s)" in table.output
        assert any(
            line.split()[:2] == ["ValueError", "10"] for line in table.output.splitlines()
        ), table.output

        # And peeking lost and reordered nothing
        order = _ids(ops_url)
        assert len(order) == 12
        assert _ids(ops_url) == order

        # When a dry run is asked for ValueError
        dry = cli(ops_url, "dlq", "replay", DLQ, "--filter", "ValueError", "--dry-run")

        # Then it lists the ten and moves nothing
        assert dry.exit_code == 0, dry.output
        assert "would replay 10 of 12 examined message(s)" in dry.stdout
        assert "dry run: nothing was moved" in dry.stdout
        assert dry.stdout.count("research.fragile") == 10
        assert queue_counts(ops_url, DLQ)[0] == 12
        assert _ids(ops_url) == order

        # When one is replayed while the fault is still there
        before = len(_runs(runs))
        one = cli(ops_url, "dlq", "replay", DLQ, "--filter", "research.fragile", "--limit", "1")
        assert one.exit_code == 0, one.output
        assert one.stdout.startswith("replayed 1 of ")

        # Then it gets a fresh retry budget (two more runs, not one) and dies again
        wait_for(lambda: len(_runs(runs)) == before + 2, 30, 0.25, what="two more runs")
        wait_for(lambda: queue_counts(ops_url, DLQ)[0] == 12, 30, 0.25, what="back in the DLQ")
        order = _ids(ops_url)

        # When the fault is fixed and the ValueErrors are replayed
        fault.unlink()
        done = cli(ops_url, "dlq", "replay", DLQ, "--filter", "ValueError")

        # Then the ten go back to research.tasks and succeed; the KeyErrors stay, in order
        assert done.exit_code == 0, done.output
        assert "replayed 10 of 12 examined message(s)" in done.stdout
        assert (
            "replayed 10 of 12 examined message(s) from research.tasks.dlq to research.tasks"
            in (done.stdout)
        )
        assert "left 2 message(s)" in done.stdout
        assert "does not match the filter" in done.stdout
        wait_for(
            lambda: sorted(r for r in _runs(runs) if r.startswith("ok")) == sorted(
                f"ok {i}" for i in range(10)
            ),
            30, 0.25, what="ten successful runs",
        )  # fmt: skip
        left = _show(ops_url)
        assert [m["type"] for m in left["messages"]] == ["research.needs_key"] * 2  # type: ignore[attr-defined]
        assert [m["id"] for m in left["messages"]] == [i for i in order if i in set(_ids(ops_url))]  # type: ignore[attr-defined]

    # When purge is declined, nothing goes; with --yes, the DLQ is empty
    declined = cli(ops_url, "dlq", "purge", DLQ, input="n\n")
    assert declined.exit_code != 0
    assert queue_counts(ops_url, DLQ)[0] == 2
    purged = cli(ops_url, "dlq", "purge", DLQ, "--yes")
    assert purged.exit_code == 0, purged.output
    assert "purged 2 message(s) from research.tasks.dlq" in purged.stdout
    listed = cli(ops_url, "dlq", "list", "--json")
    assert listed.exit_code == 0, listed.output
    depths = {row["queue"]: row["depth"] for row in json.loads(listed.stdout)}
    assert depths[DLQ] == 0
    assert set(depths) >= {DLQ, "cad.tasks.dlq", "brain.commands.dlq", "dlx.queue"}


def test_broker_dead_letters_are_decoded_from_x_death(ops_url: str) -> None:
    # Given a message the broker dead-letters itself (it expires in research.tasks)
    with Connection(ops_url) as connection:
        producer = connection.Producer()
        producer.publish(
            {"hello": "world"}, exchange="", routing_key="research.tasks",
            expiration=0.001, headers={"task": "research.paper", "id": "t-1"},
        )  # fmt: skip
    wait_for(lambda: queue_counts(ops_url, DLQ)[0] == 1, 10, 0.1, what="an expired dead letter")

    # When it is shown
    shown = _show(ops_url)

    # Then the x-death reason, queue and task are read
    (letter,) = shown["messages"]  # type: ignore[misc]
    assert letter["error_type"] == "broker:expired"
    assert letter["reason_source"] == "broker"
    assert letter["original_queue"] == "research.tasks"
    assert letter["type"] == "research.paper"
    assert letter["attempts"] == 1

    # And `dlq list` gives its age, and a dry run would send it back to research.tasks
    listed = cli(ops_url, "dlq", "list")
    assert listed.exit_code == 0
    assert any(line.split()[:2] == [DLQ, "1"] for line in listed.stdout.splitlines())
    dry = cli(ops_url, "dlq", "replay", DLQ, "--dry-run", "--json")
    assert dry.exit_code == 0, dry.output
    report = json.loads(dry.stdout)
    assert [m["original_queue"] for m in report["would_replay"]] == ["research.tasks"]
    assert report["replayed"] == []
    assert queue_counts(ops_url, DLQ)[0] == 1


def test_bad_queue_and_bad_url_are_one_line_errors(ops_url: str) -> None:
    # When the queue does not exist, or is not a DLQ, or the broker is not there
    unknown = cli(ops_url, "dlq", "show", "no.such.queue")
    broker_down = cli("amqp://guest:guest@127.0.0.1:1//", "dlq", "list")
    not_a_url = cli("localhost", "dlq", "replay", DLQ)

    # Then each is one clear line and a non-zero exit
    for result, words in (
        (unknown, "'no.such.queue' is not a dead-letter queue"),
        (broker_down, "cannot connect to the broker at amqp://guest:**@127.0.0.1:1//"),
        (not_a_url, "not an AMQP URL: 'localhost'"),
    ):
        assert result.exit_code == 1, result.output
        assert words in result.output
        assert len(result.output.strip().splitlines()) == 1, result.output


@pytest.mark.slow
def test_a_replay_killed_part_way_loses_nothing(ops_url: str) -> None:
    # Given ten dead letters and no worker
    with Connection(ops_url) as connection:
        producer = connection.Producer()
        for item in range(10):
            producer.publish(
                [[item], {}, {}], exchange="dlx", routing_key="research.tasks",
                headers={"task": "research.fragile", "id": f"t-{item}", "retries": 1,
                         "x-kitty-error-type": "ValueError"},
            )  # fmt: skip
    wait_for(lambda: queue_counts(ops_url, DLQ)[0] == 10, 10, 0.1, what="ten dead letters")

    # When a slow replay (2 per second) is killed with SIGKILL after a few moves
    replay = subprocess.Popen(
        [KITTY_TASKS, "--url", ops_url, "dlq", "replay", DLQ, "--rate", "2", "--json"],
        cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    wait_for(lambda: queue_counts(ops_url, "research.tasks")[0] >= 2, 20, 0.05, what="two moves")
    replay.kill()
    replay.wait(10)

    # Then every message is in one queue or the other (at most one twice: confirmed, not acked)
    def settled() -> tuple[int, int] | None:
        dead, moved = queue_counts(ops_url, DLQ)[0], queue_counts(ops_url, "research.tasks")[0]
        return (dead, moved) if dead + moved >= 10 else None

    dead, moved = wait_for(settled, 10, 0.1, what="the unacked messages back in the DLQ")
    assert 2 <= moved < 10
    assert dead + moved in (10, 11)
