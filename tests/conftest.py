"""Fixtures shared by every test: broker URLs and a fresh vhost per test run.

``KITTY_TEST_BROKER`` picks the broker: ``default`` (``RABBITMQ_URL``, the machine's) or
``rabbitmq4`` (the RabbitMQ 4.x node of ``scripts/rabbitmq4.sh``; tests marked
``rabbitmq4`` run only there). It is read at import, before the conftests of the
test folders bind ``BASE_URL``.
"""

from __future__ import annotations

import os
import shutil
import socket
import tempfile
import urllib.parse
import uuid
from typing import Any

import pytest
from kombu import Connection

from kitty_tasks.core.connection import safe_url
from kitty_tasks.core.declarer import apply_topology
from kitty_tasks.core.management import ManagementClient
from kitty_tasks.core.settings import DEFAULT_RABBITMQ_URL

#: The brokers a test run can target, and where scripts/rabbitmq4.sh's node listens.
BROKERS = ("default", "rabbitmq4")
RABBITMQ4_URL = os.environ.get("KITTY_RABBITMQ4_URL", "amqp://guest:guest@127.0.0.1:5673//")
RABBITMQ4_MANAGEMENT_URL = os.environ.get(
    "KITTY_RABBITMQ4_MANAGEMENT_URL", "http://127.0.0.1:15673"
)
BROKER = os.environ.get("KITTY_TEST_BROKER", "default") or "default"
if BROKER not in BROKERS:
    raise pytest.UsageError(
        f"KITTY_TEST_BROKER must be one of {', '.join(BROKERS)}, not {BROKER!r}"
    )
if BROKER == "rabbitmq4":
    # Worker subprocesses and the app under test inherit these.
    os.environ["RABBITMQ_URL"] = RABBITMQ4_URL
    os.environ["KITTY_MANAGEMENT_URL"] = RABBITMQ4_MANAGEMENT_URL
    os.environ["KITTY_BROKER_PROMETHEUS_URL"] = os.environ.get(
        "KITTY_RABBITMQ4_PROMETHEUS_URL", "http://127.0.0.1:15693"
    )

BASE_URL = os.environ.get("RABBITMQ_URL", DEFAULT_RABBITMQ_URL)
MANAGEMENT_URL = os.environ.get("KITTY_MANAGEMENT_URL", "http://localhost:15672")


def broker_reachable(url: str = BASE_URL) -> bool:
    """True when a TCP connection to the broker's AMQP port succeeds."""
    parsed = urllib.parse.urlsplit(url)
    try:
        with socket.create_connection((parsed.hostname or "localhost", parsed.port or 5672), 2):
            return True
    except OSError:
        return False


def url_for_vhost(vhost: str, base: str = BASE_URL) -> str:
    """``base`` with its vhost replaced by ``vhost``."""
    parsed = urllib.parse.urlsplit(base)
    return urllib.parse.urlunsplit(parsed._replace(path="/" + urllib.parse.quote(vhost, safe="")))


@pytest.fixture(scope="session")
def management_client() -> ManagementClient:
    """Management API client with the base URL's credentials."""
    return ManagementClient.from_urls(MANAGEMENT_URL, BASE_URL)


_SESSION: dict[str, str] = {}


def pytest_configure(config: pytest.Config) -> None:
    """Create this run's vhost before any test imports the app, and point RABBITMQ_URL at it.

    Worker subprocesses inherit the variable, and the Celery app reads it when first
    configured, so every part of a test run talks to the same fresh vhost. Results
    go to an SQLite file of the run's own, unless KITTY_RESULT_BACKEND is set.
    """
    if "KITTY_RESULT_BACKEND" not in os.environ:
        results_dir = tempfile.mkdtemp(prefix="kitty-test-results-")
        _SESSION["results_dir"] = results_dir
        os.environ["KITTY_RESULT_BACKEND"] = f"db+sqlite:///{results_dir}/results.sqlite3"
    if not broker_reachable():
        return
    client = ManagementClient.from_urls(MANAGEMENT_URL, BASE_URL)
    overview = client.get("overview") or {}
    _SESSION["version"] = str(overview.get("rabbitmq_version", "?"))
    vhost = f"kitty-test-{uuid.uuid4().hex[:8]}"
    user = urllib.parse.unquote(urllib.parse.urlsplit(BASE_URL).username or "guest")
    client.create_vhost(vhost, user)
    with Connection(url_for_vhost(vhost)) as connection:
        apply_topology(connection)
    _SESSION["vhost"] = vhost
    os.environ["RABBITMQ_URL"] = url_for_vhost(vhost)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Skip the ``rabbitmq4`` tests unless this run targets the 4.x broker."""
    if BROKER == "rabbitmq4":
        return
    skip = pytest.mark.skip(reason="needs RabbitMQ 4.x: KITTY_TEST_BROKER=rabbitmq4")
    for item in items:
        if "rabbitmq4" in item.keywords:
            item.add_marker(skip)


def broker_line() -> str:
    """Which broker this run talks to, for the report's header and summary."""
    version = _SESSION.get("version", "unreachable")
    return f"broker: {BROKER} (RabbitMQ {version}) at {safe_url(BASE_URL)}"


def pytest_report_header(config: pytest.Config) -> str:
    """Name the broker at the top of the report."""
    return broker_line()


def pytest_terminal_summary(terminalreporter: Any) -> None:
    """Name the broker again next to the counts, so two runs in one log are told apart."""
    terminalreporter.write_line(broker_line())


def pytest_unconfigure(config: pytest.Config) -> None:
    """Delete this run's vhost and everything in it, and its results file."""
    results_dir = _SESSION.pop("results_dir", None)
    if results_dir is not None:
        shutil.rmtree(results_dir, ignore_errors=True)
    vhost = _SESSION.pop("vhost", None)
    if vhost is not None:
        ManagementClient.from_urls(MANAGEMENT_URL, BASE_URL).delete_vhost(vhost)


@pytest.fixture(scope="session")
def test_vhost() -> str:
    """This run's own vhost, with the topology applied; deleted when the run ends."""
    if "vhost" not in _SESSION:
        if os.environ.get("CI"):
            pytest.fail(f"RabbitMQ is not reachable at {BASE_URL} and CI is set")
        pytest.skip(f"RabbitMQ is not reachable at {BASE_URL}")
    return _SESSION["vhost"]


@pytest.fixture(scope="session")
def amqp_url(test_vhost: str) -> str:
    """AMQP URL of the test run's vhost."""
    return url_for_vhost(test_vhost)


def drop_connections(client: ManagementClient, vhost: str) -> int:
    """Close every client connection to ``vhost`` (a scoped ``close_all_connections``)."""
    closed = 0
    for connection in client.get("connections") or []:
        if connection.get("vhost") == vhost:
            name = urllib.parse.quote(connection["name"], safe="")
            client.request("DELETE", f"connections/{name}")
            closed += 1
    return closed
