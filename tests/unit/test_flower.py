"""The Flower launcher refuses to start without basic auth, and keeps the password off argv."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from kitty_tasks.ops.flower import (
    AuthError,
    build_command,
    check_basic_auth,
    default_broker_api,
)

API = "http://localhost:15672/api/"


def command(
    env: dict[str, str], address: str = "0.0.0.0", insecure_local: bool = False
) -> list[str]:
    return build_command(
        env, address=address, port=5555, broker_api=API, insecure_local=insecure_local
    )


def test_starts_flower_with_auth_from_the_environment() -> None:
    argv = command({"FLOWER_BASIC_AUTH": "ops:correct-horse"})
    assert argv[1:6] == ["-m", "kitty_tasks.ops.flower_app", "-A", "kitty_tasks", "flower"]
    assert "--address=0.0.0.0" in argv
    assert "--port=5555" in argv
    assert f"--broker-api={API}" in argv
    # Flower reads FLOWER_BASIC_AUTH itself: the password never appears in `ps`.
    assert not any("correct-horse" in arg for arg in argv)


def test_refuses_without_auth() -> None:
    with pytest.raises(AuthError, match="FLOWER_BASIC_AUTH=user:password"):
        command({})


def test_insecure_local_only_on_loopback() -> None:
    assert command({}, address="127.0.0.1", insecure_local=True)
    with pytest.raises(AuthError, match=r"only allowed on 127\.0\.0\.1"):
        command({}, address="0.0.0.0", insecure_local=True)


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("nopassword", "user:password"),
        (":longenoughpassword", "without a user"),
        ("ops:short", "shorter than 8"),
        ("ops:correct-horse,dev:tiny", "'dev'"),
        (" , ", "empty"),
    ],
)
def test_rejects_malformed_or_weak_credentials(value: str, message: str) -> None:
    with pytest.raises(AuthError, match=message):
        check_basic_auth(value)


def test_accepts_several_users() -> None:
    assert check_basic_auth("ops:correct-horse,dev:battery-staple") == [
        "ops:correct-horse",
        "dev:battery-staple",
    ]


@pytest.mark.parametrize(
    ("management_url", "expected"),
    [
        ("http://localhost:15672", "http://localhost:15672/api/"),
        ("http://rabbitmq:15672/", "http://rabbitmq:15672/api/"),
        ("https://mq.example/api", "https://mq.example/api/"),
    ],
)
def test_broker_api_from_the_management_url(management_url: str, expected: str) -> None:
    assert default_broker_api(management_url) == expected


def test_module_exits_non_zero_with_a_clear_message_without_auth() -> None:
    # Given no FLOWER_BASIC_AUTH in the environment
    env = {k: v for k, v in os.environ.items() if k != "FLOWER_BASIC_AUTH"}
    # When the launcher runs on a public address
    result = subprocess.run(
        [sys.executable, "-m", "kitty_tasks.ops.flower", "--address", "0.0.0.0"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    # Then it refuses, says what to set, and never started Flower
    assert result.returncode == 2
    assert "FLOWER_BASIC_AUTH=user:password" in result.stderr
    assert "--insecure-local" in result.stderr
