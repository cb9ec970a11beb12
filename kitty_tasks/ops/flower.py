"""Start Flower for the platform with basic auth required and the broker tab wired up."""

from __future__ import annotations

import os
import sys
import urllib.parse
from collections.abc import Mapping

import click

from kitty_tasks.core.settings import get_settings

__all__ = ["AuthError", "build_command", "check_basic_auth", "check_credential", "main"]

#: Flower reads its own ``FLOWER_*`` variables; this is the one we insist on.
AUTH_ENV = "FLOWER_BASIC_AUTH"
#: Shortest password accepted, so "admin:admin"-style placeholders fail loudly.
MIN_PASSWORD_LENGTH = 8
#: Passwords long enough to pass the length check that are still everybody's first guess.
PLACEHOLDER_PASSWORDS = frozenset(
    {"password", "password1", "changeme", "changeit", "12345678", "123456789", "letmein1",
     "administrator", "qwertyuiop", "set-me-please"}
)  # fmt: skip
#: Addresses that only this machine can reach.
LOCAL_ADDRESSES = frozenset({"127.0.0.1", "localhost", "::1"})

MISSING_AUTH = (
    "Flower needs basic auth: set {env}=user:password (several: user1:pw1,user2:pw2).\n"
    "On a developer machine you may instead bind to 127.0.0.1 and pass --insecure-local."
)


class AuthError(ValueError):
    """The basic-auth setting is missing, malformed or too weak."""


def check_basic_auth(value: str) -> list[str]:
    """Split Flower's ``user:password[,user:password]`` value, refusing empty or short parts."""
    credentials = [part for part in value.split(",") if part.strip()]
    if not credentials:
        raise AuthError(f"{AUTH_ENV} is empty")
    for credential in credentials:
        user, sep, password = credential.partition(":")
        if not sep or not user.strip():
            raise AuthError(f"{AUTH_ENV} must look like user:password, got an entry without a user")
        check_credential(user, password, AUTH_ENV)
    return credentials


def check_credential(user: str, password: str, setting: str) -> None:
    """Refuse a password that is short, a well-known placeholder, or the user name again."""
    if len(password) < MIN_PASSWORD_LENGTH:
        raise AuthError(
            f"{setting}: the password of {user!r} is shorter than {MIN_PASSWORD_LENGTH} characters"
        )
    if password.lower() in PLACEHOLDER_PASSWORDS or password == user:
        raise AuthError(f"{setting}: the password of {user!r} is a placeholder; choose a real one")


def default_broker_api(management_url: str) -> str:
    """Flower's ``--broker-api`` for a management URL; credentials come from the broker URL."""
    parsed = urllib.parse.urlsplit(management_url)
    # Flower joins "queues/<vhost>" onto this URL, so it must end in "/api/".
    path = parsed.path.rstrip("/")
    if not path.endswith("/api"):
        path += "/api"
    return urllib.parse.urlunsplit(parsed._replace(path=path + "/"))


def build_command(
    env: Mapping[str, str],
    *,
    address: str,
    port: int,
    broker_api: str,
    insecure_local: bool,
) -> list[str]:
    """The ``celery flower`` argv to exec, or ``AuthError`` when starting would be unsafe."""
    auth = env.get(AUTH_ENV, "")
    if auth:
        check_basic_auth(auth)
    elif not insecure_local:
        raise AuthError(MISSING_AUTH.format(env=AUTH_ENV))
    elif address not in LOCAL_ADDRESSES:
        raise AuthError(
            f"--insecure-local is only allowed on 127.0.0.1, not on {address!r}; "
            f"set {AUTH_ENV}=user:password instead"
        )
    # The password stays in the environment (Flower reads FLOWER_BASIC_AUTH itself),
    # so it never shows up in `ps` output the way a --basic-auth argument would.
    # Celery's command line, with Flower's Broker tab limited to the platform's vhost.
    return [
        sys.executable,
        "-m",
        "kitty_tasks.ops.flower_app",
        "-A",
        "kitty_tasks",
        "flower",
        f"--address={address}",
        f"--port={port}",
        f"--broker-api={broker_api}",
    ]


@click.command()
@click.option("--address", default="0.0.0.0", show_default=True, help="Address to bind.")  # noqa: S104
@click.option("--port", type=int, envvar="FLOWER_PORT", default=5555, show_default=True)
@click.option(
    "--broker-api",
    envvar="FLOWER_BROKER_API",
    default=None,
    help="Management API for the broker tab (default: KITTY_MANAGEMENT_URL + /api/).",
)
@click.option(
    "--insecure-local",
    is_flag=True,
    help="Allow starting without basic auth, but only when bound to 127.0.0.1.",
)
def main(address: str, port: int, broker_api: str | None, insecure_local: bool) -> None:
    """Run Flower on the platform's Celery app; refuses to start without basic auth."""
    api = broker_api or default_broker_api(get_settings().management_url)
    try:
        argv = build_command(
            os.environ, address=address, port=port, broker_api=api, insecure_local=insecure_local
        )
    except AuthError as err:
        click.echo(f"kitty-flower: {err}", err=True)
        sys.exit(2)
    if not os.environ.get(AUTH_ENV):
        click.echo(f"kitty-flower: WARNING: no basic auth, Flower is open on {address}", err=True)
    sys.stdout.flush()
    # exec, not a child: the supervisor's signals reach Flower itself.
    os.execv(argv[0], argv)  # noqa: S606 - our own interpreter and fixed arguments


if __name__ == "__main__":
    main()
