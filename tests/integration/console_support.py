"""Helpers of the console tests: the console as a subprocess, Debian's chromium for Playwright."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import requests

from tests.conftest import MANAGEMENT_URL
from tests.helpers import KITTY_TASKS, ROOT, wait_for
from tests.integration.ops_support import free_port

USER = "operator"
PASSWORD = "correct-horse-battery"
AUTH = (USER, PASSWORD)
#: Set to 1 to write docs/console-*.png from the browser test (CI leaves the committed ones).
SCREENSHOTS_ENV = "KITTY_CONSOLE_SCREENSHOTS"


def chromium_path() -> str:
    """Debian's chromium (or KITTY_CHROMIUM); without either, skipped, or failed under CI."""
    path = os.environ.get("KITTY_CHROMIUM") or shutil.which("chromium")
    if not path:
        reason = "no chromium: apt-get install chromium (make test installs it)"
        if os.environ.get("CI"):
            pytest.fail(f"{reason}, and CI is set")
        pytest.skip(reason)
    return path


def screenshot_path(name: str) -> Path | None:
    """Where to save the screenshot ``name``, or None unless SCREENSHOTS_ENV asks for it."""
    if os.environ.get(SCREENSHOTS_ENV) != "1":
        return None
    return ROOT / "docs" / f"console-{name}.png"


class Console:
    """A running ``kitty-tasks console`` and its base URL."""

    def __init__(self, process: subprocess.Popen[bytes], base: str, log: Path) -> None:
        self.process = process
        self.base = base
        self.log = log

    def url(self, path: str = "/") -> str:
        """The absolute URL of ``path``."""
        return self.base + path

    def output(self) -> str:
        """What the console printed so far."""
        return self.log.read_text(errors="replace")


@contextmanager
def running_console(url: str, *args: str) -> Iterator[Console]:
    """``kitty-tasks console`` on a free port against ``url``; stopped with SIGTERM after."""
    port = free_port()
    env = {**os.environ, "KITTY_CONSOLE_USER": USER, "KITTY_CONSOLE_PASSWORD": PASSWORD}
    fd, log_name = tempfile.mkstemp(prefix="kitty-console-", suffix=".log")
    log = Path(log_name)
    with os.fdopen(fd, "wb") as out:
        process = subprocess.Popen(
            [KITTY_TASKS, "--url", url, "--management-url", MANAGEMENT_URL, "console",
             "--port", str(port), *args],
            cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
    console = Console(process, f"http://127.0.0.1:{port}", log)

    def answering() -> bool:
        if process.poll() is not None:
            raise AssertionError(f"the console exited early:\n{console.output()}")
        try:
            return requests.get(console.url(), timeout=2).status_code == 401
        except requests.ConnectionError:
            return False

    try:
        wait_for(answering, 30, 0.1, what="the console to answer")
        yield console
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)
        log.unlink(missing_ok=True)


def logged_in_session(console: Console, page: str) -> tuple[requests.Session, str]:
    """A logged-in session that has loaded ``page`` (so it holds the CSRF cookie) and its token."""
    session = requests.Session()
    session.auth = AUTH
    answer = session.get(console.url(page), timeout=30)
    assert answer.status_code == 200, answer.text
    token = session.cookies.get("_xsrf")
    assert token, "the page set no CSRF cookie"
    return session, token


def chromium_available() -> bool:
    """True when a chromium executable can be found."""
    return bool(os.environ.get("KITTY_CHROMIUM") or shutil.which("chromium"))
