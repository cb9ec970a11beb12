"""``kitty-tasks events replay``: the audit stream's events of a time window, printed or resent."""

from __future__ import annotations

import click

from events.errors import ConfigurationError
from events.replay import ReplayStats, read_stream, republish
from events.window import ReplayWindow
from kitty_tasks.core.topology import AUDIT_EVENTS
from kitty_tasks.ops.cli_dlq import operator_errors
from kitty_tasks.ops.cli_format import echo_json
from kitty_tasks.ops.cli_wire import event_line

__all__ = ["replay"]


class InputError(click.ClickException):
    """A bad option value: one line on stderr, exit code 2 (as click's own usage errors)."""

    exit_code = 2


@click.command("replay")
@click.option("--since", required=True, help="Start: a duration ago (10m, 2h30m, 7d) or ISO 8601.")
@click.option("--until", default=None, help="End (excluded), same forms; default: now.")
@click.option("--pattern", default="#", show_default=True, help="Topic pattern of event types.")
@click.option("--print", "to_print", is_flag=True, help="Print the events, oldest first.")
@click.option("--to-queue", default=None, metavar="QUEUE", help="Republish into this queue only.")
@click.option("--json", "as_json", is_flag=True, help="JSON lines (--print) or a JSON summary.")
@click.pass_context
def replay(
    ctx: click.Context,
    *,
    since: str,
    until: str | None,
    pattern: str,
    to_print: bool,
    to_queue: str | None,
    as_json: bool,
) -> None:
    """Read the audit stream from --since and print its events, or republish them to a queue.

    Events are selected by their own timestamp and type. --to-queue sends them, with
    confirms, to that one queue (not to every subscriber), marked x-kitty-replayed-from
    and with their event ids, so @idempotent handlers skip those already handled.
    """
    if to_print == (to_queue is not None):
        raise InputError("give exactly one of --print and --to-queue QUEUE")
    try:
        window = ReplayWindow.build(since, until, pattern)
    except ConfigurationError as err:
        raise InputError(str(err)) from None
    stats = ReplayStats()
    span = " to ".join(t.isoformat(timespec="seconds") for t in (window.since, window.until))
    with operator_errors():
        if to_queue is None:
            for stored in read_stream(ctx.obj["url"], window, stats=stats):
                click.echo(event_line(stored.event, as_json))
            # On stderr, so that --print --json output stays pure JSON lines.
            click.echo(f"{stats.matched} event(s) matched; {_counts(stats, span)}", err=True)
            return
        try:
            republish(
                ctx.obj["url"], to_queue, since=window.since, until=window.until,
                pattern=window.pattern, stats=stats,
            )  # fmt: skip
        except ConfigurationError as err:
            raise InputError(str(err)) from None
    if as_json:
        echo_json({"stream": AUDIT_EVENTS, "queue": to_queue, "since": window.since,
                   "until": window.until, "pattern": window.pattern, **vars(stats)})  # fmt: skip
    else:
        click.echo(
            f"republished {stats.republished} event(s) into {to_queue}; {_counts(stats, span)}"
        )


def _counts(stats: ReplayStats, span: str) -> str:
    skipped = f", {stats.undecodable} undecodable skipped" if stats.undecodable else ""
    return f"{stats.read} read from {AUDIT_EVENTS}, window {span}{skipped}"
