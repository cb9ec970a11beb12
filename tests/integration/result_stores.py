"""The result stores the tests read from: an SQLite file, the real PostgreSQL and Redis."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import urllib.parse
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import ROOT

#: The machine's servers; `make test` (scripts/ensure-test-services.sh) makes sure both run.
POSTGRES_URL = os.environ.get(
    "KITTY_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)
REDIS_URL = os.environ.get("KITTY_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")

STORES = ["sqlite", "postgres", "redis"]


def _ci_or_skip(reason: str) -> None:
    if os.environ.get("CI"):
        pytest.fail(f"{reason} and CI is set")
    pytest.skip(reason)


@pytest.fixture
def postgres_store() -> Iterator[str]:
    """A result-backend URL on a schema of this test's own, dropped afterwards."""
    import psycopg

    schema = f"kitty_results_{uuid.uuid4().hex[:8]}"
    dsn = POSTGRES_URL.replace("postgresql+psycopg://", "postgresql://", 1)
    try:
        with psycopg.connect(dsn, autocommit=True, connect_timeout=5) as connection:
            connection.execute(f"CREATE SCHEMA {schema}")
    except psycopg.OperationalError as err:
        _ci_or_skip(f"PostgreSQL is not reachable at {POSTGRES_URL}: {err}")
    # Every connection of Celery's engine looks in the schema first, creating its tables there.
    options = urllib.parse.quote(f"-csearch_path={schema}")
    separator = "&" if "?" in POSTGRES_URL else "?"
    yield f"db+{POSTGRES_URL}{separator}options={options}"
    with psycopg.connect(dsn, autocommit=True) as connection:
        connection.execute(f"DROP SCHEMA {schema} CASCADE")


@pytest.fixture
def redis_store() -> Iterator[str]:
    """Redis's URL; the keys of results the test stored are deleted afterwards."""
    import redis

    client = redis.Redis.from_url(REDIS_URL, socket_connect_timeout=5)
    try:
        client.ping()
    except redis.ConnectionError as err:
        _ci_or_skip(f"Redis is not reachable at {REDIS_URL}: {err}")
    before = set(client.scan_iter("celery-task*"))
    yield REDIS_URL
    created = set(client.scan_iter("celery-task*")) - before
    if created:
        client.delete(*created)


@pytest.fixture(params=STORES)
def result_store(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """``KITTY_RESULT_BACKEND`` of each store in turn."""
    if request.param == "sqlite":
        return f"db+sqlite:///{tmp_path}/results.sqlite3"
    return str(request.getfixturevalue(f"{request.param}_store"))


READER = textwrap.dedent(
    """
    import json, sys
    from kitty_tasks import TaskFailed, TaskQueue, app

    answers = {}
    for task_id in sys.argv[1:]:
        result = app.AsyncResult(task_id)
        value = result.get(timeout=60, propagate=False)
        answer = {"state": result.state}
        if result.successful():
            answer["value"] = value
        else:
            answer["error"] = [type(value).__name__, str(value)]
        try:
            answer["taskqueue"] = TaskQueue().result(task_id, timeout=10)
        except TaskFailed as failed:
            answer["failed"] = [failed.state, failed.error_type, failed.error_message,
                                failed.attempts]
        answers[task_id] = answer
    print(json.dumps(answers))
    """
)


def read_in_another_process(url: str, store: str, *task_ids: str) -> dict[str, Any]:
    """Each task's outcome as a fresh Python process reads it from ``store``."""
    env = {**os.environ, "RABBITMQ_URL": url, "KITTY_RESULT_BACKEND": store}
    done = subprocess.run(
        [sys.executable, "-c", READER, *task_ids],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    answers: dict[str, Any] = json.loads(done.stdout)
    return answers
