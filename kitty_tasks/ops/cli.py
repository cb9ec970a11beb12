"""The ``kitty-tasks`` command line: topology, and (in cli_* modules) the operator's tools."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click
from kombu import Connection

from kitty_tasks.core.connection import vhost_of
from kitty_tasks.core.declarer import apply_topology, compare_topology
from kitty_tasks.core.management import ManagementError
from kitty_tasks.core.settings import get_settings
from kitty_tasks.core.topology import TOPOLOGY, QueueType, build_topology, definitions_json
from kitty_tasks.ops.cli_access import access
from kitty_tasks.ops.cli_console import console
from kitty_tasks.ops.cli_dlq import dlq
from kitty_tasks.ops.cli_format import management_client
from kitty_tasks.ops.cli_ops import health, metrics
from kitty_tasks.ops.cli_replay import replay
from kitty_tasks.ops.cli_tasks import tasks
from kitty_tasks.ops.cli_wire import events, rpc

__all__ = ["main"]

DEFINITIONS_PATH = Path("compose/rabbitmq/definitions.json")
PICTURE_PATH = Path("docs/topology.svg")


@click.group()
@click.option("--url", envvar="RABBITMQ_URL", default=None, help="AMQP URL (env RABBITMQ_URL).")
@click.option(
    "--management-url",
    envvar="KITTY_MANAGEMENT_URL",
    default=None,
    help="Management API base URL (env KITTY_MANAGEMENT_URL).",
)
@click.pass_context
def main(ctx: click.Context, url: str | None, management_url: str | None) -> None:
    """Operate the kitty_tasks messaging platform."""
    settings = get_settings()
    ctx.obj = {
        "url": url or settings.rabbitmq_url,
        "management_url": management_url or settings.management_url,
    }


main.add_command(health)
main.add_command(dlq)
main.add_command(tasks)
main.add_command(metrics)
main.add_command(events)
main.add_command(rpc)
main.add_command(access)
main.add_command(console)
events.add_command(replay)


@main.group()
def topology() -> None:
    """Declare, export and verify the broker topology."""


@topology.command("apply")
@click.pass_context
def topology_apply(ctx: click.Context) -> None:
    """Declare every exchange, queue and binding (idempotent)."""
    url = ctx.obj["url"]
    try:
        with Connection(url, connect_timeout=5) as connection:
            connection.ensure_connection(max_retries=3)
            apply_topology(connection, TOPOLOGY)
    except Exception as err:
        raise click.ClickException(
            f"cannot apply the topology on {vhost_of(url)!r}: {err}"
        ) from err
    click.echo(
        f"applied {len(TOPOLOGY.exchanges)} exchanges and {len(TOPOLOGY.queues)} queues "
        f"to vhost {vhost_of(url)!r}"
    )


@topology.command("export")
@click.option(
    "--output",
    "-o",
    type=click.Path(dir_okay=False, path_type=Path),
    default=DEFINITIONS_PATH,
    show_default=True,
    help="File to write; '-' for stdout.",
)
@click.option(
    "--queue-type",
    type=click.Choice([t.value for t in QueueType]),
    default=QueueType.CLASSIC.value,
    show_default=True,
    help="Type of the event and audit queues (quorum for a cluster).",
)
def topology_export(output: Path, queue_type: str) -> None:
    """Write the topology as RabbitMQ definitions (for the broker's load_definitions)."""
    text = definitions_json(build_topology(event_queue_type=QueueType(queue_type)))
    if str(output) == "-":
        click.echo(text, nl=False)
        return
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(text)
    click.echo(f"wrote {output}")


@topology.command("picture")
@click.option(
    "--output",
    "-o",
    type=click.Path(dir_okay=False, path_type=Path),
    default=PICTURE_PATH,
    show_default=True,
    help="File to write; '-' for stdout.",
)
def topology_picture(output: Path) -> None:
    """Draw the topology as an SVG: exchanges, queues, bindings, the retry ladder, the DLQs."""
    from kitty_tasks.ops.console.picture import topology_svg  # noqa: PLC0415

    text = topology_svg(TOPOLOGY)
    if str(output) == "-":
        click.echo(text, nl=False)
        return
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(text)
    click.echo(f"wrote {output}")


@topology.command("verify")
@click.option("--vhost", default=None, help="Vhost to check (default: the URL's).")
@click.option("--json", "as_json", is_flag=True, help="Print the differences as JSON.")
@click.pass_context
def topology_verify(ctx: click.Context, vhost: str | None, as_json: bool) -> None:
    """Compare the live broker with the code; exit 1 and list the differences if any."""
    vhost = vhost or vhost_of(ctx.obj["url"])
    try:
        differences = compare_topology(management_client(ctx), vhost, TOPOLOGY)
    except ManagementError as err:
        raise click.ClickException(str(err)) from err
    if as_json:
        click.echo(json.dumps([d.__dict__ for d in differences], indent=2))
    elif differences:
        for difference in differences:
            click.echo(str(difference))
        click.echo(f"{len(differences)} difference(s) in vhost {vhost!r}", err=True)
    else:
        click.echo(f"vhost {vhost!r} matches the topology")
    sys.exit(1 if differences else 0)
