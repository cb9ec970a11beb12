"""``kitty-tasks access``: the services' broker accounts, applied, exported and verified."""

from __future__ import annotations

import json
import os
from pathlib import Path

import click

from kitty_tasks.core.access import (
    ACCESS,
    ServiceAccess,
    access_definitions,
    parse_secrets,
    passwords_from,
    service,
)
from kitty_tasks.core.accounts import apply_access, compare_access
from kitty_tasks.core.connection import vhost_of
from kitty_tasks.core.errors import ConfigurationError
from kitty_tasks.core.management import ManagementError
from kitty_tasks.ops.cli_format import management_client, report_differences

__all__ = ["ACCESS_DEFINITIONS_PATH", "access"]

#: Where compose's broker loads the accounts from (git-ignored: it holds password hashes).
ACCESS_DEFINITIONS_PATH = Path("compose/rabbitmq/access.json")

_SECRETS_HELP = (
    "File of passwords: service=password lines or a JSON object "
    "(default: KITTY_PASSWORD_<SERVICE> variables)."
)
_SERVICE_HELP = "Only this service (repeatable; default: every service of the table)."


def _entries(names: tuple[str, ...]) -> list[ServiceAccess]:
    try:
        return [service(n) for n in names] if names else list(ACCESS)
    except ConfigurationError as err:
        raise click.BadParameter(str(err), param_hint="--service") from err


def _passwords(entries: list[ServiceAccess], secrets: Path | None) -> dict[str, str]:
    try:
        given = parse_secrets(secrets.read_text()) if secrets is not None else None
        return passwords_from(entries, os.environ, given)
    except (ConfigurationError, OSError) as err:
        raise click.ClickException(str(err)) from err


@click.group()
def access() -> None:
    """Per-service broker accounts from the access table (kitty_tasks/core/access.py)."""


@access.command("apply")
@click.option("--vhost", default=None, help="Vhost to grant on (default: the URL's).")
@click.option(
    "--secrets", type=click.Path(dir_okay=False, exists=True, path_type=Path), help=_SECRETS_HELP
)
@click.option("--service", "services", multiple=True, help=_SERVICE_HELP)
@click.pass_context
def access_apply(
    ctx: click.Context, vhost: str | None, secrets: Path | None, services: tuple[str, ...]
) -> None:
    """Create or update each service's user, permissions and topic permissions."""
    vhost = vhost or vhost_of(ctx.obj["url"])
    entries = _entries(services)
    passwords = _passwords(entries, secrets)
    try:
        users = apply_access(management_client(ctx), vhost, passwords, entries)
    except ManagementError as err:
        raise click.ClickException(str(err)) from err
    click.echo(f"applied {len(users)} account(s) to vhost {vhost!r}: {', '.join(users)}")


@access.command("export")
@click.option(
    "--output",
    "-o",
    type=click.Path(dir_okay=False, path_type=Path),
    default=ACCESS_DEFINITIONS_PATH,
    show_default=True,
    help="Definitions file to write; '-' for stdout.",
)
@click.option("--vhost", default="/", show_default=True, help="Vhost of the permissions.")
@click.option(
    "--secrets", type=click.Path(dir_okay=False, exists=True, path_type=Path), help=_SECRETS_HELP
)
@click.option("--service", "services", multiple=True, help=_SERVICE_HELP)
def access_export(
    output: Path, vhost: str, secrets: Path | None, services: tuple[str, ...]
) -> None:
    """Write the accounts as RabbitMQ definitions: users (salted hashes), permissions."""
    entries = _entries(services)
    definitions = access_definitions(_passwords(entries, secrets), vhost=vhost, entries=entries)
    text = json.dumps(definitions, indent=2, sort_keys=True) + "\n"
    if str(output) == "-":
        click.echo(text, nl=False)
        return
    output.parent.mkdir(parents=True, exist_ok=True)
    # Hashes are secrets too: the file is readable by its owner only, from its first byte.
    fd = os.open(output, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(text)
    click.echo(f"wrote {len(entries)} account(s) to {output}")


@access.command("verify")
@click.option("--vhost", default=None, help="Vhost to check (default: the URL's).")
@click.option("--service", "services", multiple=True, help=_SERVICE_HELP)
@click.option("--json", "as_json", is_flag=True, help="Print the differences as JSON.")
@click.pass_context
def access_verify(
    ctx: click.Context, vhost: str | None, services: tuple[str, ...], as_json: bool
) -> None:
    """Compare the broker's accounts with the table; exit 1 and list the differences if any."""
    vhost = vhost or vhost_of(ctx.obj["url"])
    try:
        differences = compare_access(management_client(ctx), vhost, _entries(services))
    except ManagementError as err:
        raise click.ClickException(str(err)) from err
    report_differences(
        differences,
        vhost=vhost,
        as_json=as_json,
        matched=f"accounts on vhost {vhost!r} match the access table",
    )
