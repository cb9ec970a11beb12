"""``kitty-tasks health``, ``tasks submit`` and ``metrics serve``."""

from __future__ import annotations

import json
import signal
import sys
import threading
from typing import Any

import click
from kombu.exceptions import OperationalError

from kitty_tasks.core.connection import connected, safe_url, vhost_of
from kitty_tasks.core.errors import KittyError
from kitty_tasks.core.topology import MAX_PRIORITY
from kitty_tasks.ops.cli_dlq import operator_errors
from kitty_tasks.ops.cli_format import echo_json, json_object, management_client, table
from kitty_tasks.ops.health import HealthReport, check_health

__all__ = ["health", "metrics", "tasks"]

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
def tasks() -> None:
    """Submit the platform's built-in tasks."""


def _submit(
    app: Any,
    url: str,
    task_name: str,
    *,
    kwargs: dict[str, Any],
    options: dict[str, Any],
    wait: float | None,
) -> dict[str, Any]:
    """Publish the task on a connection to ``url``; wait for its result if asked."""
    try:
        with app.connection_for_write(url) as connection:
            result = app.tasks[task_name].apply_async(
                kwargs=kwargs, connection=connection, **options
            )
    except (KittyError, OperationalError) as err:
        raise click.ClickException(f"cannot submit {task_name}: {err}") from err
    answer: dict[str, Any] = {"task_id": result.id, "task": task_name}
    if wait is not None:
        try:
            answer["result"] = result.get(timeout=wait, propagate=False)
            answer["state"] = result.state
        except Exception as err:
            raise click.ClickException(
                f"no result for {result.id} within {wait:g}s: {err}"
            ) from err
    return answer


@tasks.command("submit")
@click.argument("task_name")
@click.option("--kwargs", "kwargs_text", default="{}", help="Keyword arguments as a JSON object.")
@click.option(
    "--priority", type=click.IntRange(0, MAX_PRIORITY), default=None, help="0 (low) to 10 (high)."
)
@click.option("--queue", default=None, help="Queue to send to (default: the task's route).")
@click.option(
    "--wait", type=click.FloatRange(min=0, min_open=True), default=None, metavar="SECONDS",
    help="Wait this long for the result and print it.",
)  # fmt: skip
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_context
def tasks_submit(
    ctx: click.Context,
    *,
    task_name: str,
    kwargs_text: str,
    priority: int | None,
    queue: str | None,
    wait: float | None,
    as_json: bool,
) -> None:
    """Publish TASK_NAME (e.g. research.paper) with JSON keyword arguments."""
    # Loaded on use: the other commands (health, dlq, topology) need no Celery app.
    from kitty_tasks.runtime.application import app  # noqa: PLC0415

    kwargs = json_object(kwargs_text, "--kwargs")
    url = ctx.obj["url"]
    app.loader.import_default_modules()
    known = sorted(name for name in app.tasks if not name.startswith("celery."))
    if task_name not in app.tasks or task_name.startswith("celery."):
        raise click.ClickException(f"unknown task {task_name!r}; known: {', '.join(known)}")
    options: dict[str, Any] = {"retry": False}
    if priority is not None:
        options["priority"] = priority
    if queue is not None:
        options["queue"] = queue
    with operator_errors(), connected(url):
        pass  # fail with one clear line before Celery's own connection retries
    # The result backend (rpc://) reads on the app's broker: point it at --url for this
    # command only, so that an in-process caller's app is left as it was.
    previous_url = app.conf.broker_url
    app.conf.broker_url = url
    try:
        answer = _submit(app, url, task_name, kwargs=kwargs, options=options, wait=wait)
    finally:
        app.conf.broker_url = previous_url
    if as_json:
        echo_json(answer)
        return
    click.echo(f"submitted {task_name} as {answer['task_id']}")
    if "result" in answer:
        click.echo(f"{answer['state']}: {json.dumps(answer['result'], default=str)}")


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
