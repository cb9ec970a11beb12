"""``kitty-tasks console``: the operator console in a browser."""

from __future__ import annotations

import os
import sys

import click

from kitty_tasks.core.connection import connected
from kitty_tasks.ops.cli_dlq import operator_errors
from kitty_tasks.ops.flower import AuthError

__all__ = ["console"]

DEFAULT_PORT = 8765


@click.command()
@click.option("--address", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option(
    "--port", type=click.IntRange(1, 65535), envvar="KITTY_CONSOLE_PORT",
    default=DEFAULT_PORT, show_default=True, help="Port to listen on (env KITTY_CONSOLE_PORT).",
)  # fmt: skip
@click.option("--read-only", is_flag=True, help="Show everything; refuse replay and purge.")
@click.option(
    "--scan-limit", type=click.IntRange(min=1), default=10_000, show_default=True,
    help="Dead letters a DLQ's page decodes from the head to group them.",
)  # fmt: skip
@click.pass_context
def console(ctx: click.Context, address: str, port: int, read_only: bool, scan_limit: int) -> None:
    """Serve the operator console: health, depths, topology drift, DLQ triage and replay.

    Basic auth is required: KITTY_CONSOLE_USER and KITTY_CONSOLE_PASSWORD (no defaults).
    """
    # Tornado and the pages load only for this command.
    from kitty_tasks.ops.console.app import serve  # noqa: PLC0415
    from kitty_tasks.ops.console.auth import credentials_from  # noqa: PLC0415
    from kitty_tasks.ops.console.views import ConsoleConfig  # noqa: PLC0415

    try:
        credentials = credentials_from(os.environ)
    except AuthError as err:
        raise click.UsageError(str(err)) from err
    config = ConsoleConfig(
        ctx.obj["url"], ctx.obj["management_url"], read_only=read_only, scan_limit=scan_limit
    )
    mode = " (read-only)" if read_only else ""

    def ready() -> None:
        click.echo(f"console of vhost {config.vhost!r} at http://{address}:{port}/{mode}")
        sys.stdout.flush()

    with operator_errors():
        config.management().queues(config.vhost)  # fail at start, not on the first page
        with connected(config.url):
            pass
    try:
        serve(config, credentials, address, port, ready)
    except OSError as err:
        raise click.ClickException(f"cannot listen on {address}:{port}: {err}") from err
