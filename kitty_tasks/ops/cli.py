"""The ``kitty-tasks`` command line: topology, and (in cli_* modules) the operator's tools."""

from __future__ import annotations

from pathlib import Path

import click
from kombu import Connection

from kitty_tasks.core.connection import vhost_of
from kitty_tasks.core.declarer import apply_topology, compare_topology
from kitty_tasks.core.management import ManagementError
from kitty_tasks.core.settings import TopologyProfile, get_settings
from kitty_tasks.core.topology import QueueType, build_topology, definitions_json
from kitty_tasks.ops.cli_access import access
from kitty_tasks.ops.cli_console import console
from kitty_tasks.ops.cli_dlq import dlq
from kitty_tasks.ops.cli_format import management_client, report_differences, write_output
from kitty_tasks.ops.cli_ops import health, metrics
from kitty_tasks.ops.cli_replay import replay
from kitty_tasks.ops.cli_tasks import tasks
from kitty_tasks.ops.cli_wire import events, rpc

__all__ = ["main"]

#: Where `topology picture` writes the drawing the README shows.
PICTURE_PATH = Path("docs/topology.svg")
#: Where each profile's definitions file is committed (and what compose mounts).
DEFINITIONS_PATHS = {
    TopologyProfile.CLASSIC: Path("compose/rabbitmq/definitions.json"),
    TopologyProfile.QUORUM: Path("compose/rabbitmq/definitions.quorum.json"),
}

profile_option = click.option(
    "--profile",
    type=click.Choice([p.value for p in TopologyProfile]),
    envvar="KITTY_TOPOLOGY_PROFILE",
    default=TopologyProfile.CLASSIC.value,
    show_default=True,
    help="Topology profile (env KITTY_TOPOLOGY_PROFILE); quorum needs RabbitMQ 4.0+.",
)


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
@profile_option
@click.pass_context
def topology_apply(ctx: click.Context, profile: str) -> None:
    """Declare every exchange, queue and binding (idempotent)."""
    url = ctx.obj["url"]
    chosen = build_topology(profile=TopologyProfile(profile))
    try:
        with Connection(url, connect_timeout=5) as connection:
            connection.ensure_connection(max_retries=3)
            apply_topology(connection, chosen)
    except Exception as err:
        raise click.ClickException(
            f"cannot apply the topology on {vhost_of(url)!r}: {err}"
        ) from err
    click.echo(
        f"applied {len(chosen.exchanges)} exchanges and {len(chosen.queues)} queues "
        f"({profile} profile) to vhost {vhost_of(url)!r}"
    )


@topology.command("export")
@click.option(
    "--output",
    "-o",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="File to write; '-' for stdout. Default: the profile's file under compose/rabbitmq/.",
)
@profile_option
@click.option(
    "--queue-type",
    type=click.Choice([t.value for t in QueueType]),
    default=QueueType.CLASSIC.value,
    show_default=True,
    help="Classic profile only: type of the event and audit queues (quorum for a 3.x cluster).",
)
def topology_export(output: Path | None, profile: str, queue_type: str) -> None:
    """Write the topology as RabbitMQ definitions (for the broker's load_definitions)."""
    chosen = TopologyProfile(profile)
    if chosen is TopologyProfile.QUORUM and queue_type != QueueType.CLASSIC.value:
        raise click.UsageError(
            "--queue-type is for the classic profile; quorum has every queue quorum"
        )
    output = output or DEFINITIONS_PATHS[chosen]
    text = definitions_json(build_topology(event_queue_type=QueueType(queue_type), profile=chosen))
    write_output(text, output)


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

    text = topology_svg(build_topology())  # the classic profile: the one the README shows
    write_output(text, output)


@topology.command("verify")
@click.option("--vhost", default=None, help="Vhost to check (default: the URL's).")
@click.option("--json", "as_json", is_flag=True, help="Print the differences as JSON.")
@profile_option
@click.pass_context
def topology_verify(ctx: click.Context, vhost: str | None, as_json: bool, profile: str) -> None:
    """Compare the live broker with the code; exit 1 and list the differences if any."""
    vhost = vhost or vhost_of(ctx.obj["url"])
    chosen = build_topology(profile=TopologyProfile(profile))
    try:
        differences = compare_topology(management_client(ctx), vhost, chosen)
    except ManagementError as err:
        raise click.ClickException(str(err)) from err
    report_differences(
        differences, vhost=vhost, as_json=as_json, matched=f"vhost {vhost!r} matches the topology"
    )
