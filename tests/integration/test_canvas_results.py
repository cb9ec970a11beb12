"""Celery's canvas through the retry ladder, with each result store."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from kitty_tasks.core.topology import BRAIN_COMMANDS, RESEARCH_TASKS
from tests.helpers import ROOT, CeleryWorker

pytestmark = [pytest.mark.rabbitmq, pytest.mark.slow]

TEST_TASKS = "tests.integration.tasks_for_tests"

# A client of its own, as the brain API is: it builds the canvas and reads the results.
CANVAS_CLIENT = textwrap.dedent(
    """
    import json, sys
    from celery import chain, chord, group
    from kitty_tasks.tasks.research import research_paper
    from tests.integration.tasks_for_tests import collect, flaky, record_order

    runs, order = sys.argv[1], sys.argv[2]
    steps = chain(flaky.si(runs, 1), record_order.si(order, "second")).apply_async()
    queries = ["nozzle clog", "bed adhesion", "layer shift"]
    researched = group(research_paper.s(q, max_results=1) for q in queries).apply_async()
    collected = chord((research_paper.s(q, max_results=1) for q in queries), collect.s())()
    print(json.dumps({
        "chain": steps.get(timeout=90),
        "chain_first": steps.parent.get(timeout=5),
        "group": [answer["query"] for answer in researched.get(timeout=90)],
        "chord": collected.get(timeout=90),
    }))
    """
)


def test_chain_group_and_chord_complete_through_the_ladder(
    amqp_url: str, result_store: str, tmp_path: Path
) -> None:
    # Given a worker on the research queue and the brain queue (chord_unlock's, on SQL stores)
    env = {"KITTY_RESULT_BACKEND": result_store}
    runs, order = tmp_path / "runs.log", tmp_path / "order.log"
    with CeleryWorker(
        amqp_url, [RESEARCH_TASKS, BRAIN_COMMANDS], concurrency=2, include=[TEST_TASKS], env=env
    ):
        # When a client runs a chain whose first step fails once, a group and a chord
        done = subprocess.run(
            [sys.executable, "-c", CANVAS_CLIENT, str(runs), str(order)],
            cwd=ROOT, env={**os.environ, **env, "RABBITMQ_URL": amqp_url},
            capture_output=True, text=True, timeout=240, check=False,
        )  # fmt: skip

    # Then the chain's first step ran twice (once retried), then its second step ran
    assert done.returncode == 0, done.stderr
    answers = json.loads(done.stdout)
    assert answers["chain_first"] == {"runs": 2}
    assert [line.split()[1] for line in runs.read_text().splitlines()] == ["0", "1"]
    assert answers["chain"] == "second"
    assert order.read_text().split() == ["second"]
    # And the group and the chord returned every member's result, in order
    queries = ["nozzle clog", "bed adhesion", "layer shift"]
    assert answers["group"] == queries
    assert answers["chord"] == queries
