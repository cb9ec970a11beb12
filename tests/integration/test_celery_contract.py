"""Celery's own integration tests pass on the platform's task class, consumer and settings."""

from __future__ import annotations

import os
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from tests.celery_upstream.suite import DIFFERENCES, SELECTED, fetch_suite
from tests.helpers import ROOT

pytestmark = [pytest.mark.rabbitmq, pytest.mark.slow]

REDIS_URL = os.environ.get("KITTY_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


def _unavailable(reason: str) -> None:
    if os.environ.get("CI"):
        pytest.fail(reason)
    pytest.skip(reason)


@pytest.fixture(scope="module")
def celery_suite() -> Path:
    """Celery's ``t/`` of the installed version (fetched from PyPI once, kept in .cache/)."""
    try:
        return fetch_suite()
    except (subprocess.SubprocessError, OSError, ValueError) as err:
        _unavailable(f"could not fetch Celery's test suite from PyPI: {err}")
        raise


@pytest.fixture(scope="module")
def redis_url() -> str:
    """The Redis result store Celery's suite asserts against."""
    redis = pytest.importorskip("redis")
    try:
        redis.Redis.from_url(REDIS_URL, socket_connect_timeout=2).ping()
    except redis.RedisError as err:
        _unavailable(f"Redis is not reachable at {REDIS_URL}: {err}")
    return REDIS_URL


@pytest.mark.timeout(1500)  # one pytest run of ~40 of Celery's cases, with its own worker
def test_celerys_own_task_and_canvas_tests_pass_on_the_platform(
    amqp_url: str, celery_suite: Path, redis_url: str, tmp_path: Path
):
    # Given Celery's integration tests of tasks, retries, link errors and canvas,
    # run by a worker built with KittyTask, KittyConsumer and the platform's settings
    report = tmp_path / "celery.xml"
    env = {
        **os.environ,
        "TEST_BROKER": amqp_url,
        "TEST_BACKEND": redis_url,
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
    }
    run = subprocess.run(
        [
            sys.executable, "-m", "pytest", "-p", "tests.celery_upstream.plugin",
            "-p", "no:cacheprovider", "-q", "-rfEX", f"--junitxml={report}", *SELECTED,
        ],
        check=False, cwd=celery_suite, env=env, capture_output=True, text=True, timeout=1200,
    )  # fmt: skip

    # Then every selected case passes, but the deliberate differences, which fail as marked
    outcomes = _outcomes(report)
    detail = run.stdout[-6000:] + run.stderr[-2000:]
    assert run.returncode == 0, detail
    assert outcomes, detail
    failed = {case: outcome for case, outcome in outcomes.items() if outcome == "failed"}
    assert not failed, detail
    assert {case for case, outcome in outcomes.items() if outcome == "xfailed"} == set(
        DIFFERENCES
    ), detail


def _outcomes(report: Path) -> dict[str, str]:
    """Node id -> passed / failed / skipped / xfailed, from pytest's JUnit XML."""
    outcomes: dict[str, str] = {}
    for case in ET.parse(report).iter("testcase"):  # noqa: S314 - our own subprocess wrote it
        module = case.get("classname", "").rsplit(".", 1)
        path = module[0].replace(".", "/") + ".py" if len(module) == 2 else ""
        node = f"{path}::{module[-1]}::{case.get('name')}"
        skipped = case.find("skipped")
        if case.find("failure") is not None or case.find("error") is not None:
            outcomes[node] = "failed"
        elif skipped is not None:
            xfail = skipped.get("type") == "pytest.xfail"
            outcomes[node] = "xfailed" if xfail else "skipped"
        else:
            outcomes[node] = "passed"
    return outcomes
