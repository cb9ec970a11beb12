"""``kitty-tasks health`` and ``metrics serve``."""

from __future__ import annotations

import signal
import sys
import threading
from typing import Any

import click

from kitty_tasks.core.connection import connected, safe_url, vhost_of
from kitty_tasks.core.errors import KittyError
from kitty_tasks.ops.cli_dlq import operator_errors
from kitty_tasks.ops.cli_format import echo_json, management_client, table
from kitty_tasks.ops.health import HealthReport, check_health

__all__ = ["health", "metrics"]

#: Port of ``metrics serve`` unless told otherwise (next to node_exporter's 9100 range).
DEFAULT_METRICS_PORT = 9808


def _size(value: Any) -> str:
    if not isinstance(value, (int, float)):
        return "?"
    return f"{value / 1e9:.1f} GB" if value >= 1e9 else f"{value / 1e6:.0f} MB"


def _print_health(report: HealthReport) -> None:
    click.echo(f"broker  {report.broker}  vhost {report.vhost!r}")
    for node in report.nodes:
        state = "running" if node["running"] else "NOT RUNNING"
        click.echo(
            f"node    {node['name']} {state}, memory {_size(node['mem_used'])} of "
            f"{_size(node['mem_limit'])}, disk free {_size(node['disk_free'])} "
            f"(limit {_size(node['disk_free_limit'])})"
        )
    click.echo(f"alarms  {', '.join(report.alarms) or 'none'}")
    click.echo("")
    rows = [
        (q.name, q.kind, q.ready, q.unacked, q.consumers, q.problem or "ok") for q in report.queues
    ]
    click.echo(table(["queue", "kind", "ready", "unacked", "consumers", "status"], rows))
    for warning in report.warnings:
        click.echo(f"warning: {warning}")
    click.echo("")


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.option(
    "--fail-on-dead-letters", is_flag=True, help="Also unhealthy when a DLQ holds messages."
)
@click.pass_context
def health(ctx: click.Context, as_json: bool, fail_on_dead_letters: bool) -> None:
    """Check the broker, its alarms and every queue; exit 1 with the reason when unhealthy."""
    url = ctx.obj["url"]
    vhost = vhost_of(url) if "://" in url else "?"
    try:
        with connected(url) as connection:
            report = check_health(
                connection, management_client(ctx), vhost,
                broker=safe_url(url), dead_letters_fail=fail_on_dead_letters,
            )  # fmt: skip
    except KittyError as err:
        report = HealthReport(vhost=vhost, broker=safe_url(url))
        report.problems.append(" ".join(str(err).split()))
    if as_json:
        echo_json(report.to_dict())
    else:
        if report.nodes or report.queues:
            _print_health(report)
        if report.healthy:
            click.echo("healthy")
        else:
            click.echo(f"unhealthy: {report.reason}", err=True)
    sys.exit(0 if report.healthy else 1)


@click.group()
def metrics() -> None:
    """Prometheus metrics of the broker side."""


@metrics.command("serve")
@click.option(
    "--port", type=click.IntRange(0, 65535), default=DEFAULT_METRICS_PORT, show_default=True
)
@click.option("--addr", default="0.0.0.0", show_default=True, help="Address to listen on.")  # noqa: S104
@click.option("--vhost", default=None, help="Vhost to watch (default: the URL's).")
@click.pass_context
def metrics_serve(ctx: click.Context, port: int, addr: str, vhost: str | None) -> None:
    """Serve queue depth/consumers and DLQ depth/oldest age on /metrics, read on each scrape."""
    from kitty_tasks.ops.exporter import serve  # noqa: PLC0415 - only this command needs it

    url = ctx.obj["url"]
    vhost = vhost or vhost_of(url)
    management = management_client(ctx)
    with operator_errors():
        management.queues(vhost)  # fail at start, not at the first scrape
        with connected(url):
            pass
        try:
            serve(url, management, vhost, port=port, addr=addr)
        except OSError as err:
            raise click.ClickException(f"cannot listen on {addr}:{port}: {err}") from err
    click.echo(f"serving broker metrics of vhost {vhost!r} on http://{addr}:{port}/metrics")
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        while not stop.wait(1.0):
            pass
    except KeyboardInterrupt:
        pass
