"""`make run`'s supervisor: everything comes up, Flower wants auth, Ctrl-C leaves nothing behind."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from kitty_tasks.core.connection import vhost_of
from kitty_tasks.core.management import ManagementClient
from tests.helpers import KITTY_TASKS, ROOT, wait_for
from tests.integration.ops_support import free_port

pytestmark = [pytest.mark.rabbitmq, pytest.mark.slow]

WORKERS = ("research", "cad", "brain")


def descendants(root: int) -> set[int]:
    """Every live process below ``root`` (from /proc, so honcho's new sessions are included)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry.name))
    found: set[int] = set()
    todo = [root]
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


def alive(pid: int) -> bool:
    """True unless ``pid`` is gone or a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def session_members(sessions: set[int]) -> set[int]:
    """Live processes in any of ``sessions``."""
    members = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if os.getsid(int(entry.name)) in sessions and alive(int(entry.name)):
                    members.add(int(entry.name))
            except OSError:
                continue
    return members


@pytest.fixture
def platform(ops_url: str, tmp_path: Path) -> Iterator[dict[str, object]]:
    """scripts/run.sh (what `make run` runs after broker check and topology) on free ports.

    In a vhost of its own, so its workers do not eat other tests' leftover messages.
    """
    ports = {
        "FLOWER_PORT": free_port(),
        "KITTY_CONSOLE_PORT": free_port(),
        "KITTY_EXPORTER_PORT": free_port(),
        "KITTY_RESEARCH_METRICS_PORT": free_port(),
        "KITTY_CAD_METRICS_PORT": free_port(),
        "KITTY_BRAIN_METRICS_PORT": free_port(),
    }
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FLOWER_", "KITTY_"))}
    env.update({name: str(port) for name, port in ports.items()})
    env.update(
        RABBITMQ_URL=ops_url,
        KITTY_ENV_FILE=str(tmp_path / "no.env"),  # a developer's .env must not redirect the test
        KITTY_FLOWER_CREDENTIALS_FILE=str(tmp_path / "flower-credentials"),
        KITTY_CONSOLE_CREDENTIALS_FILE=str(tmp_path / "console-credentials"),
        KITTY_RUN_DIR=str(tmp_path / "run"),
        KITTY_RESULT_BACKEND=f"db+sqlite:///{tmp_path}/results.sqlite3",
    )
    log = (tmp_path / "run.log").open("w+")
    # A session of its own: SIGINT to its process group is what Ctrl-C in a terminal does.
    process = subprocess.Popen(
        [str(ROOT / "scripts/run.sh")],
        cwd=ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    info: dict[str, object] = {
        "process": process,
        "ports": ports,
        "log": log,
        "tmp": tmp_path,
        "url": ops_url,
        "results": env["KITTY_RESULT_BACKEND"],
    }
    try:
        yield info
    finally:
        # A failed test must not leave its platform running: Ctrl-C first (so run.sh
        # tidies up), then kill what is left, group by group.
        if process.poll() is None:
            started = descendants(process.pid) | {process.pid}
            os.killpg(process.pid, signal.SIGINT)
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=30)
            for pid in started:
                with contextlib.suppress(OSError):
                    if alive(pid):
                        os.killpg(pid, signal.SIGKILL)
            process.wait(timeout=30)
        log.close()


def output(platform: dict[str, object]) -> str:
    log = platform["log"]
    assert hasattr(log, "seek")
    log.seek(0)
    return str(log.read())


def test_make_run_brings_up_workers_and_flower_and_ctrl_c_stops_every_process(
    platform: dict[str, object],
) -> None:
    process = platform["process"]
    assert isinstance(process, subprocess.Popen)
    ports = platform["ports"]
    assert isinstance(ports, dict)
    flower = f"http://127.0.0.1:{ports['FLOWER_PORT']}"

    # Given the supervisor started: the banner comes first, with the generated Flower login
    credentials_file = Path(str(platform["tmp"])) / "flower-credentials"
    wait_for(credentials_file.exists, timeout=30, what="the generated Flower credentials")
    wait_for(lambda: "Ctrl-C" in output(platform), timeout=30, what="the banner")
    user, _, password = credentials_file.read_text().strip().partition(":")
    assert oct(credentials_file.stat().st_mode & 0o777) == "0o600"
    banner = output(platform)
    assert banner.startswith("kitty_tasks is starting")
    assert f"Flower               {flower}" in banner
    assert f"password {password}" in banner
    assert f"http://127.0.0.1:{ports['KITTY_EXPORTER_PORT']}/metrics" in banner

    def flower_get(path: str, auth: tuple[str, str] | None = None) -> requests.Response | None:
        try:
            return requests.get(flower + path, auth=auth, timeout=5)
        except requests.ConnectionError:
            return None

    # When Flower answers
    wait_for(lambda: flower_get("/healthcheck"), timeout=60, interval=0.5, what="Flower")
    # Then its API wants credentials
    anonymous = flower_get("/api/workers")
    assert anonymous is not None
    assert anonymous.status_code == 401
    wrong = flower_get("/api/workers", auth=(user, password + "x"))
    assert wrong is not None
    assert wrong.status_code == 401

    # And with them it lists the three workers
    def workers() -> set[str]:
        answer = flower_get("/api/workers?refresh=1", auth=(user, password))
        if answer is None or answer.status_code != 200:
            return set()
        names = {name.split("@")[0] for name in answer.json()}
        return names if names >= set(WORKERS) else set()

    assert wait_for(workers, timeout=90, interval=1, what="three workers in Flower") >= set(WORKERS)
    # And Flower's own /metrics stays available to Prometheus
    metrics = flower_get("/metrics")
    assert metrics is not None
    assert metrics.status_code == 200
    assert "flower_" in metrics.text
    # And the console answers at the URL the banner gives, only with its generated login
    console = f"http://127.0.0.1:{ports['KITTY_CONSOLE_PORT']}"
    console_file = Path(str(platform["tmp"])) / "console-credentials"
    console_user, _, console_password = console_file.read_text().strip().partition(":")
    assert oct(console_file.stat().st_mode & 0o777) == "0o600"
    assert f"Console              {console}" in banner
    assert f"password {console_password}" in banner
    wait_for(lambda: _get_status(console + "/dlq") == 401, timeout=60, what="the console")
    login = (console_user, console_password)
    assert requests.get(console + "/dlq", auth=login, timeout=30).status_code == 200

    # And the exporter and every worker serve metrics
    for name in ("KITTY_EXPORTER_PORT", *(f"KITTY_{w.upper()}_METRICS_PORT" for w in WORKERS)):
        url = f"http://127.0.0.1:{ports[name]}/metrics"
        wait_for(lambda url=url: _get_ok(url), timeout=30, what=url)

    # And `make demo` drives the three patterns against it
    demo = subprocess.run(
        [
            sys.executable,
            "-m",
            "kitty_tasks.ops.demo",
            "--url",
            str(platform["url"]),
            "--timeout",
            "30",
        ],
        cwd=ROOT,
        env={**os.environ, "KITTY_RESULT_BACKEND": str(platform["results"])},
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert demo.returncode == 0, demo.stdout + demo.stderr
    assert "all 4 patterns worked" in demo.stdout
    assert "cad_generate.apply_async(priority=9)" in demo.stdout
    assert "subscriber got fabrication.print.completed" in demo.stdout
    assert "{'result': 8}" in demo.stdout

    # And a task submitted from a shell has its result in Flower's API (the same store)
    store = {**os.environ, "KITTY_RESULT_BACKEND": str(platform["results"])}
    submitted = subprocess.run(
        [KITTY_TASKS, "--url", str(platform["url"]), "tasks", "submit", "research.paper",
         "--args", '["nozzle clog"]', "--wait", "30", "--json"],
        cwd=ROOT, env=store, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert submitted.returncode == 0, submitted.stderr
    task_id = json.loads(submitted.stdout)["task_id"]
    answer = flower_get(f"/api/task/result/{task_id}", auth=(user, password))
    assert answer is not None
    assert answer.status_code == 200, answer.text
    assert answer.json()["state"] == "SUCCESS"
    assert answer.json()["result"]["query"] == "nozzle clog"

    # When Ctrl-C reaches the supervisor's process group
    running = descendants(process.pid)
    sessions = {os.getsid(pid) for pid in running if alive(pid)}
    assert len(running) >= 3 * 2 + 2  # three worker parents with children, Flower, exporter
    os.killpg(process.pid, signal.SIGINT)
    # Then the supervisor exits, and no process it started is left
    process.wait(timeout=60)
    leftovers = {pid for pid in running if alive(pid)} | session_members(sessions)
    assert not leftovers, f"left behind: {leftovers}\n{output(platform)[-3000:]}"
    log = output(platform)
    for worker in WORKERS:
        assert f"{worker}.1 stopped" in log
    # And beat ran, keeping its schedule in the run directory (never in the checkout)
    assert "beat.1 stopped" in log
    assert list((Path(str(platform["tmp"])) / "run").glob("celerybeat-schedule*"))
    assert "SIGKILL" not in log, "a process needed SIGKILL to stop"


def _get_ok(url: str) -> bool:
    try:
        return requests.get(url, timeout=5).status_code == 200
    except requests.ConnectionError:
        return False


def test_demo_without_the_platform_says_how_to_start_it(ops_url: str) -> None:
    # Given a broker with the topology but no workers running
    # When `make demo` runs
    demo = subprocess.run(
        [sys.executable, "-m", "kitty_tasks.ops.demo", "--url", ops_url, "--timeout", "10"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    # Then the task steps fail at once with the fix, the self-contained ones still work
    assert demo.returncode == 1
    assert "no worker consumes 'research.tasks'" in demo.stdout
    assert "start the platform with `make run`" in demo.stdout
    assert "2 of 4 steps failed" in demo.stderr
    assert "{'result': 8}" in demo.stdout


def test_demo_leaves_only_the_platform_topology(
    ops_url: str, management_client: ManagementClient
) -> None:
    # Given a vhost with the platform's topology
    vhost = vhost_of(ops_url)
    before = {q["name"] for q in management_client.queues(vhost)}
    # When `make demo` runs its self-contained steps (events, RPC) there
    demo = subprocess.run(
        [sys.executable, "-m", "kitty_tasks.ops.demo", "--url", ops_url, "--timeout", "10"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert "{'result': 8}" in demo.stdout, demo.stdout + demo.stderr
    assert "subscriber got fabrication.print.completed" in demo.stdout
    # Then every queue it declared is gone (math.rpc, its DLQ, its subscriber's), and the
    # platform's queues are all still there
    after = {q["name"] for q in management_client.queues(vhost)}
    assert after == before, f"left behind: {after - before}; lost: {before - after}"


def _get_status(url: str) -> int | None:
    """The HTTP status ``url`` answers with; None while nothing listens."""
    try:
        return requests.get(url, timeout=5).status_code
    except requests.ConnectionError:
        return None
