"""CLI parsing and output: tables, ages, health verdicts, bad input as one-line errors."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from kitty_tasks.core.connection import safe_url as redact
from kitty_tasks.ops.cli import main
from kitty_tasks.ops.cli_format import format_age, table, truncate
from kitty_tasks.ops.health import HealthReport, node_alarms
from kitty_tasks.ops.queues import is_dead_letter_queue, is_reported, queue_kind

#: Nothing listens on port 1: "broker down" without touching a real broker.
DOWN = "amqp://guest:secret@127.0.0.1:1//"


def run(*args: str, input: str | None = None) -> tuple[int, str]:
    result = CliRunner().invoke(main, ["--url", DOWN, *args], input=input)
    return result.exit_code, result.output


def test_table_aligns_columns_under_upper_case_headers() -> None:
    text = table(["queue", "depth"], [("research.tasks.dlq", 10), ("dlx.queue", None)])

    assert text.splitlines() == [
        "QUEUE               DEPTH",
        "research.tasks.dlq  10",
        "dlx.queue           -",
    ]


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(None, "-"), (0.4, "0s"), (59, "59s"), (61, "1m01s"), (7260, "2h01m"), (90000, "1d01h")],
)
def test_ages_read_like_a_person_would_say_them(seconds: float | None, text: str) -> None:
    assert format_age(seconds) == text


def test_truncate_keeps_one_line() -> None:
    assert truncate("a\nb   c", 10) == "a b c"
    assert truncate("x" * 20, 5) == "xxxx…"


def test_queue_kinds_and_dead_letter_queue_names() -> None:
    assert queue_kind("research.tasks") == "task"
    assert queue_kind("research.tasks.dlq") == "dlq"
    assert queue_kind("dlx.queue") == "dlq"
    assert queue_kind("kitty.delay.5s") == "delay"
    assert queue_kind("fabrication.events") == "event"
    assert queue_kind("audit.events") == "stream"
    assert queue_kind("math.rpc") == "other"
    assert queue_kind("math.rpc", rpc_queues={"math.rpc"}) == "rpc"
    assert queue_kind("audit-service.fabrication.print.all.events") == "event"
    assert is_reported("kitty.delay.5s")
    assert is_reported("math.rpc", rpc_queues={"math.rpc"})
    assert not is_reported("1f0e4a52-6c3b-4b8e-9d0a-3f1c2b7a9e10")
    assert is_dead_letter_queue("notifications.dlq")
    assert not is_dead_letter_queue("notifications")


def test_passwords_never_reach_the_screen() -> None:
    assert redact(DOWN) == "amqp://guest:**@127.0.0.1:1//"
    assert redact("amqp://localhost//") == "amqp://localhost//"


def test_node_alarms_become_problems() -> None:
    nodes = [{"name": "rabbit@a", "running": True, "mem_alarm": True, "disk_free_alarm": False}]

    summary, alarms = node_alarms(nodes)

    assert summary[0]["name"] == "rabbit@a"
    assert alarms == ["memory alarm on rabbit@a: publishers are blocked"]


def test_health_reason_names_the_first_problem_and_counts_the_rest() -> None:
    report = HealthReport(vhost="/", broker="amqp://x")
    assert (report.healthy, report.reason) == (True, "healthy")
    report.problems += ["task queue cad.tasks has no consumer", "disk alarm on rabbit@a"]
    assert report.reason == "task queue cad.tasks has no consumer (+1 more)"
    assert report.to_dict()["healthy"] is False


def test_every_operator_command_is_listed() -> None:
    result = CliRunner().invoke(main, ["--help"])
    for command in ("health", "dlq", "tasks", "metrics", "topology"):
        assert command in result.output
    dlq_help = CliRunner().invoke(main, ["dlq", "--help"]).output
    for sub in ("list", "show", "replay", "purge"):
        assert sub in dlq_help


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (("tasks", "submit", "research.paper", "--kwargs", "{not json"), "not JSON"),
        (("tasks", "submit", "research.paper", "--kwargs", "[1]"), "must be a JSON object"),
        (("tasks", "submit", "research.paper", "--priority", "11"), "0<=x<=10"),
        (("dlq", "replay", "research.tasks.dlq", "--rate", "0"), "x>0"),
        (("dlq", "replay", "research.tasks.dlq", "--limit", "0"), "x>=1"),
        (("dlq", "show"), "Missing argument 'QUEUE'"),
    ],
)
def test_bad_arguments_are_usage_errors(args: tuple[str, ...], words: str) -> None:
    code, output = run(*args)

    assert code == 2
    assert words in output


@pytest.mark.parametrize(
    "args",
    [
        ("dlq", "show", "research.tasks.dlq"),
        ("dlq", "replay", "research.tasks.dlq", "--dry-run"),
        ("dlq", "purge", "research.tasks.dlq", "--yes"),
        ("dlq", "list"),
        ("tasks", "submit", "research.paper", "--kwargs", '{"query": "x"}'),
    ],
)
def test_a_broker_that_is_down_is_one_line_and_exit_1(args: tuple[str, ...]) -> None:
    code, output = run(*args)

    assert code == 1
    assert "cannot connect to the broker at amqp://guest:**@127.0.0.1:1//" in output
    assert "secret" not in output
    assert output.strip().splitlines()[-1].startswith("Error: ")
    assert len([line for line in output.splitlines() if line.startswith("Error")]) == 1


def test_health_of_a_broker_that_is_down_is_unhealthy_json() -> None:
    result = CliRunner().invoke(main, ["--url", DOWN, "health", "--json"])

    assert result.exit_code == 1
    assert json.loads(result.stdout)["healthy"] is False


def test_unknown_task_names_the_known_ones() -> None:
    code, output = run("tasks", "submit", "no.such.task")

    assert code == 1
    assert "unknown task 'no.such.task'; known:" in output
    assert "research.paper" in output


def test_submitting_to_another_broker_leaves_the_apps_own_broker_alone() -> None:
    from kitty_tasks.runtime.application import app

    before = app.conf.broker_url
    code, _ = run("tasks", "submit", "research.paper", "--kwargs", '{"query": "x"}')

    assert code == 1
    assert app.conf.broker_url == before
