"""``kitty-tasks dlq``: list, show, replay and purge dead-letter queues."""

from __future__ import annotations

import sys
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager

import amqp
import click
from kombu import Connection

from kitty_tasks.core.connection import connected, vhost_of
from kitty_tasks.core.errors import KittyError
from kitty_tasks.core.management import ManagementError
from kitty_tasks.core.topology import DLX_QUEUE, TOPOLOGY
from kitty_tasks.ops.cli_format import echo_json, format_age, management_client, table, truncate
from kitty_tasks.ops.dlq import DeadLetter, group_by_error
from kitty_tasks.ops.queues import is_dead_letter_queue, queue_stats, resolve_dlq
from kitty_tasks.ops.replay import ReplayReport, list_dlqs, peek, purge, replay, replay_target

__all__ = ["dlq", "operator_errors"]

#: ``dlq show`` decodes at most this many messages unless told otherwise.
DEFAULT_SHOW_LIMIT = 1000


@contextmanager
def operator_errors() -> Iterator[None]:
    """Turn the platform's and the broker's errors into a one-line CLI error (exit 1)."""
    try:
        yield
    except KittyError as err:
        raise click.ClickException(" ".join(str(err).split())) from err
    except (amqp.exceptions.AMQPError, OSError) as err:
        raise click.ClickException(f"broker error: {' '.join(str(err).split())}") from err


@contextmanager
def _dlq_connection(ctx: click.Context, queue: str) -> Iterator[tuple[Connection, str]]:
    with operator_errors(), connected(ctx.obj["url"]) as connection:
        yield connection, resolve_dlq(connection, queue)


def _queue_names(ctx: click.Context) -> list[str]:
    try:
        return [str(q["name"]) for q in management_client(ctx).queues(vhost_of(ctx.obj["url"]))]
    except ManagementError as err:
        # The topology's DLQs can still be read over AMQP; subscriber DLQs cannot be found.
        click.echo(f"warning: {err}; listing the topology's DLQs only", err=True)
        return [q.name for q in TOPOLOGY.queues if is_dead_letter_queue(q.name)]


@click.group()
def dlq() -> None:
    """Inspect, replay and purge dead-letter queues."""


@dlq.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_context
def dlq_list(ctx: click.Context, as_json: bool) -> None:
    """Every .dlq queue and dlx.queue with its depth and the age of its oldest message."""
    with operator_errors(), connected(ctx.obj["url"]) as connection:
        summaries = list_dlqs(connection, _queue_names(ctx))
    if as_json:
        echo_json([s.to_dict() for s in summaries])
        return
    rows = [(s.name, s.depth, format_age(s.oldest_age_seconds)) for s in summaries]
    click.echo(table(["queue", "depth", "oldest"], rows))
    total = sum(s.depth for s in summaries)
    click.echo(f"\n{total} dead letter(s) in {sum(1 for s in summaries if s.depth)} queue(s)")


def _letter_rows(letters: list[DeadLetter]) -> list[tuple[object, ...]]:
    return [
        (
            letter.position,
            letter.kind,
            letter.type,
            letter.error_type,
            truncate(letter.error_message, 40),
            letter.attempts,
            letter.first_failure and letter.first_failure[:19],
            letter.last_failure and letter.last_failure[:19],
            letter.original_queue,
        )
        for letter in letters
    ]


_LETTER_HEADERS = [
    "#",
    "kind",
    "type",
    "error",
    "message",
    "attempts",
    "first failure",
    "last failure",
    "original queue",
]


@dlq.command("show")
@click.argument("queue")
@click.option(
    "--limit",
    type=click.IntRange(min=1),
    default=DEFAULT_SHOW_LIMIT,
    show_default=True,
    help="Decode at most this many messages from the head.",
)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_context
def dlq_show(ctx: click.Context, queue: str, limit: int, as_json: bool) -> None:
    """Decode the dead letters of QUEUE and group them by error; nothing is moved or reordered."""
    with _dlq_connection(ctx, queue) as (connection, name):
        depth = queue_stats(connection, name).messages
        letters = peek(connection, name, limit=limit)
    groups = group_by_error(letters)
    if as_json:
        echo_json(
            {
                "queue": name,
                "depth": depth,
                "shown": len(letters),
                "groups": [g.to_dict() for g in groups],
                "messages": [letter.to_dict() for letter in letters],
            }
        )
        return
    shown = f" (first {len(letters)} shown)" if len(letters) < depth else ""
    click.echo(f"{name}: {depth} dead letter(s){shown}")
    if not letters:
        return
    click.echo("")
    click.echo(
        table(
            ["error", "count", "types", "sample message"],
            [
                (
                    g.error_type,
                    g.count,
                    ", ".join(f"{t} ({n})" for t, n in g.types.items()),
                    truncate(g.sample_message, 60),
                )
                for g in groups
            ],
        )
    )
    click.echo("")
    rows, headers = _letter_rows(letters), _LETTER_HEADERS
    if any(letter.trace_id for letter in letters):
        # Only traced letters add the column: it is 32 characters wide.
        rows = [(*row, letter.trace_id or "") for row, letter in zip(rows, letters, strict=True)]
        headers = [*headers, "trace id"]
    click.echo(table(headers, rows))


def _print_replay(report: ReplayReport) -> None:
    if report.dry_run:
        click.echo(
            f"would replay {len(report.would_replay)} of {report.examined} examined "
            f"message(s) from {report.queue}:"
        )
        if report.would_replay:
            click.echo(table(_LETTER_HEADERS, _letter_rows(report.would_replay)))
    else:
        where = f" to {report.target}" if report.replayed else ""
        click.echo(
            f"replayed {len(report.replayed)} of {report.examined} examined "
            f"message(s) from {report.queue}{where}"
        )
    if report.left:
        reasons = Counter(why for _, why in report.left)
        detail = "; ".join(f"{count} {why}" for why, count in reasons.items())
        click.echo(f"left {len(report.left)} message(s) in {report.queue}: {detail}")
    if report.dry_run:
        click.echo("dry run: nothing was moved")


@dlq.command("replay")
@click.argument("queue")
@click.option(
    "--filter",
    "patterns",
    multiple=True,
    metavar="PATTERN",
    help="Only messages whose error type or task/event type matches this glob (repeatable).",
)
@click.option(
    "--limit", type=click.IntRange(min=1), default=None, help="Replay at most this many messages."
)
@click.option("--dry-run", is_flag=True, help="List what would be replayed; move nothing.")
@click.option(
    "--to",
    "to",
    metavar="QUEUE",
    default=None,
    help=f"Target queue for {DLX_QUEUE}, whose messages may come from anywhere (required there).",
)
@click.option(
    "--rate",
    type=click.FloatRange(min=0, min_open=True),
    default=None,
    help="At most this many messages per second.",
)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_context
def dlq_replay(
    ctx: click.Context,
    *,
    queue: str,
    patterns: tuple[str, ...],
    limit: int | None,
    dry_run: bool,
    to: str | None,
    rate: float | None,
    as_json: bool,
) -> None:
    """Move dead letters of QUEUE back to their queue with their attempt counter reset.

    A dead letter of <queue>.dlq goes back only to <queue>, whatever its headers say;
    those of dlx.queue go only where --to says. Each message is confirmed by the
    broker before it is removed from the DLQ.
    """
    with _dlq_connection(ctx, queue) as (connection, name):
        try:
            replay_target(name, to)
        except ValueError as err:
            raise click.UsageError(str(err)) from err
        depth = queue_stats(connection, name).messages
        with ExitStack() as stack:
            update: Callable[[int], None] | None = None
            if not as_json and depth > 0:
                label = f"{'checking' if dry_run else 'replaying'} {name}"
                update = stack.enter_context(
                    click.progressbar(length=depth, label=label, file=sys.stderr)
                ).update
            report = replay(
                connection, name, to=to, patterns=patterns, limit=limit, dry_run=dry_run, rate=rate,
                progress=update,
            )  # fmt: skip
    if as_json:
        echo_json(report.to_dict())
    else:
        _print_replay(report)


@dlq.command("purge")
@click.argument("queue")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_context
def dlq_purge(ctx: click.Context, queue: str, yes: bool, as_json: bool) -> None:
    """Delete every dead letter in QUEUE (asks first unless --yes)."""
    with _dlq_connection(ctx, queue) as (connection, name):
        depth = queue_stats(connection, name).messages
        if not yes:
            click.confirm(
                f"Delete {depth} dead letter(s) from {name}? This cannot be undone", abort=True
            )
        purged = purge(connection, name)
    if as_json:
        echo_json({"queue": name, "purged": purged})
    else:
        click.echo(f"purged {purged} message(s) from {name}")
