"""The console's parts without a broker: its login, the topology picture, grouping, replay forms."""

from __future__ import annotations

import base64
import re
from pathlib import Path

import pytest

from kitty_tasks.core.topology import TOPOLOGY, build_topology
from kitty_tasks.ops.console.auth import Credentials, credentials_from
from kitty_tasks.ops.console.depth import DepthHistory
from kitty_tasks.ops.console.picture import topology_svg
from kitty_tasks.ops.console.views import InputError, check_dlq_name, replay_scope
from kitty_tasks.ops.dlq import decode_dead_letter, group_by_cause
from kitty_tasks.ops.flower import AuthError

ROOT = Path(__file__).resolve().parents[2]
LOGIN = {"KITTY_CONSOLE_USER": "ops", "KITTY_CONSOLE_PASSWORD": "correct-horse-battery"}


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({}, "set KITTY_CONSOLE_USER and KITTY_CONSOLE_PASSWORD"),
        ({"KITTY_CONSOLE_USER": "ops"}, "there is no default user or password"),
        ({"KITTY_CONSOLE_USER": " ", "KITTY_CONSOLE_PASSWORD": "x" * 12}, "needs a login"),
        ({"KITTY_CONSOLE_USER": "ops", "KITTY_CONSOLE_PASSWORD": "short"}, "shorter than 8"),
        ({"KITTY_CONSOLE_USER": "ops", "KITTY_CONSOLE_PASSWORD": "changeme"}, "placeholder"),
        ({"KITTY_CONSOLE_USER": "operator", "KITTY_CONSOLE_PASSWORD": "operator"}, "placeholder"),
        ({"KITTY_CONSOLE_USER": "a:b", "KITTY_CONSOLE_PASSWORD": "x" * 12}, "must not contain"),
    ],
)
def test_a_missing_or_placeholder_login_is_refused(env: dict[str, str], message: str) -> None:
    with pytest.raises(AuthError, match=message):
        credentials_from(env)


def test_only_the_configured_login_is_accepted() -> None:
    credentials = credentials_from(LOGIN)
    assert credentials == Credentials("ops", "correct-horse-battery")
    assert credentials.accepts(basic("ops", "correct-horse-battery"))
    for header in (
        None, "", basic("ops", "correct-horse-batter"), basic("Ops", "correct-horse-battery"),
        "Bearer abc", "Basic !!!not-base64", "Basic " + base64.b64encode(b"no-colon").decode(),
    ):  # fmt: skip
        assert not credentials.accepts(header), header


def test_the_picture_draws_every_exchange_queue_and_binding_of_the_topology() -> None:
    svg = topology_svg(TOPOLOGY)
    titles = set(re.findall(r"<title>(\w+) ([^<]+)</title>", svg))
    for exchange in TOPOLOGY.exchanges:
        assert ("exchange", exchange.name) in titles
    for queue in TOPOLOGY.queues:
        assert any(name == queue.name for _, name in titles), queue.name
    # One arrow per binding, per dead-letter route and per alternate exchange
    dead_letter_routes = sum(
        1 for q in TOPOLOGY.queues if q.arguments.get("x-dead-letter-exchange")
    )
    alternates = sum(1 for e in TOPOLOGY.exchanges if "alternate-exchange" in e.arguments)
    bindings = sum(1 for _ in TOPOLOGY.bindings())
    assert svg.count("marker-end=") == bindings + dead_letter_routes + alternates + 1


def test_the_picture_follows_the_data_and_marks_drift() -> None:
    # Given a topology with two ladder buckets instead of seven
    small = build_topology(buckets=(1, 60))
    svg = topology_svg(small, drifted={"cad.tasks"})
    assert svg.count('class="node delay"') == 2
    assert "kitty.delay.1m" in svg
    assert "kitty.delay.2h" not in svg
    # And the drifted queue is outlined in red, nothing else is
    assert svg.count('stroke="#d00000" stroke-width="3"') == 1


def test_the_committed_picture_is_the_topologys() -> None:
    committed = (ROOT / "docs" / "topology.svg").read_text()
    assert committed == topology_svg(TOPOLOGY), "run: kitty-tasks topology picture"


def _letter(error: str, kind: str, last: str, ident: str) -> object:
    headers = {"task": kind, "id": ident, "x-kitty-error-type": error,
               "x-kitty-error-message": f"{error} in {ident}", "x-kitty-first-failure": last,
               "x-kitty-last-failure": last}  # fmt: skip
    return decode_dead_letter(b"[]", {"application_headers": headers}, dlq="research.tasks.dlq")


def test_dead_letters_are_grouped_by_error_and_type_with_their_span() -> None:
    letters = [
        _letter("ValueError", "research.paper", "2026-01-02T10:00:00+00:00", "a"),
        _letter("ValueError", "research.paper", "2026-01-01T10:00:00+00:00", "b"),
        _letter("ValueError", "cad.generate", "2026-01-03T10:00:00+00:00", "c"),
        _letter("KeyError", "research.paper", "2026-01-04T10:00:00+00:00", "d"),
    ]
    groups = group_by_cause(letters)  # type: ignore[arg-type]
    assert [(g.error_type, g.type, g.count) for g in groups] == [
        ("ValueError", "research.paper", 2),
        ("KeyError", "research.paper", 1),
        ("ValueError", "cad.generate", 1),
    ]
    assert groups[0].first_failure == "2026-01-01T10:00:00+00:00"
    assert groups[0].last_failure == "2026-01-02T10:00:00+00:00"
    assert groups[0].sample_message == "ValueError in a"


def test_replay_forms_select_all_a_group_or_one_message() -> None:
    a, b = (
        _letter("ValueError", "x", "2026-01-01", "a"),
        _letter("KeyError", "x", "2026-01-01", "b"),
    )
    assert replay_scope({}) == ("every dead letter", None)
    _, group = replay_scope({"scope": "group", "error_type": "ValueError", "type": "x"})
    _, one = replay_scope({"scope": "message", "id": "b"})
    assert group is not None
    assert one is not None
    assert [group(a), group(b)] == [True, False]  # type: ignore[arg-type]
    assert [one(a), one(b)] == [False, True]  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"scope": "group", "error_type": "ValueError"}, "needs both error_type and type"),
        ({"scope": "message"}, "needs the message's id"),
        ({"scope": "everything"}, "unknown replay scope 'everything'"),
    ],
)
def test_a_bad_replay_form_is_a_clear_error(fields: dict[str, str], message: str) -> None:
    with pytest.raises(InputError, match=message):
        replay_scope(fields)


def test_only_dead_letter_queues_are_triaged() -> None:
    assert check_dlq_name("research.tasks.dlq") == "research.tasks.dlq"
    assert check_dlq_name("dlx.queue") == "dlx.queue"
    with pytest.raises(InputError, match=r"'research\.tasks' is not a dead-letter queue"):
        check_dlq_name("research.tasks")


def test_depth_history_keeps_the_last_samples_and_fills_gaps_with_none() -> None:
    history = DepthHistory(kept=2)
    history.record(1.0, {"a": 1})
    history.record(2.0, {"a": 2, "b": 5})
    history.record(3.0, {"b": 6})
    assert history.series() == {"times": [2.0, 3.0], "queues": {"a": [2, None], "b": [5, 6]}}
