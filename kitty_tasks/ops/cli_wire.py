"""``kitty-tasks events publish|tail`` and ``rpc call``: the other two patterns from a shell."""

from __future__ import annotations

import contextlib
import json
import time
import uuid
from typing import Any

import click
from kombu import Exchange, Queue

from events import Event, EventBus
from events.errors import DecodeError
from kitty_tasks.core.connection import connected
from kitty_tasks.core.topology import EVENTS_EXCHANGE
from kitty_tasks.ops.cli_dlq import operator_errors
from kitty_tasks.ops.cli_format import echo_json, json_object
from rpc import RPCClient

__all__ = ["event_line", "events", "rpc"]

#: Source of events published from the command line.
CLI_SOURCE = "kitty-cli"


@click.group()
def events() -> None:
    """Publish and watch events on the kitty.events exchange."""


@events.command("publish")
@click.argument("event_type")
@click.option("--data", "data_text", default="{}", help="Event data as a JSON object.")
@click.option("--source", default=CLI_SOURCE, show_default=True, help="The event's source.")
@click.option("--correlation-id", default=None, help="Correlation id to carry.")
@click.option("--allow-unroutable", is_flag=True, help="Do not fail when no queue is bound.")
@click.option("--json", "as_json", is_flag=True, help="Print the event sent as JSON.")
@click.pass_context
def events_publish(
    ctx: click.Context,
    *,
    event_type: str,
    data_text: str,
    source: str,
    correlation_id: str | None,
    allow_unroutable: bool,
    as_json: bool,
) -> None:
    """Publish EVENT_TYPE (service.entity.action) and wait for the broker's confirm."""
    data = json_object(data_text, "--data")
    with operator_errors(), EventBus(ctx.obj["url"], source=source) as bus:
        event = bus.publish(
            event_type, data, correlation_id, allow_unroutable=allow_unroutable or None
        )
    if as_json:
        echo_json(event.to_dict())
    else:
        click.echo(f"published {event.event_type} as {event.event_id}")


def _event_line(message: Any, as_json: bool) -> str:
    try:
        event = Event.decode(
            message.body,
            content_type=message.content_type,
            message_id=message.properties.get("message_id"),
        )
    except DecodeError as err:
        return json.dumps({"undecodable": str(err)}) if as_json else f"undecodable: {err}"
    return event_line(event, as_json)


def event_line(event: Event, as_json: bool) -> str:
    """One event on one line: time, type, source, id and data; or compact JSON."""
    if as_json:
        return json.dumps(event.to_dict(), separators=(",", ":"))
    stamp = event.timestamp.isoformat(timespec="seconds")
    data = json.dumps(event.data, separators=(",", ":"))
    return f"{stamp}  {event.event_type}  {event.source}  {event.event_id}  {data}"


@events.command("tail")
@click.argument("pattern", default="#")
@click.option("--count", type=click.IntRange(min=1), default=None, help="Stop after N events.")
@click.option(
    "--timeout", type=click.FloatRange(min=0, min_open=True), default=None, metavar="SECONDS",
    help="Stop after this long without an event.",
)  # fmt: skip
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line.")
@click.pass_context
def events_tail(
    ctx: click.Context, *, pattern: str, count: int | None, timeout: float | None, as_json: bool
) -> None:
    """Print events matching PATTERN (e.g. fabrication.#) as they are published.

    Tail listens on a temporary queue of its own, so it takes no event away from
    the services' queues; it sees only events published after it started.
    """
    seen = 0
    with operator_errors(), connected(ctx.obj["url"]) as connection:
        exchange = Exchange(EVENTS_EXCHANGE, type="topic", passive=True)
        queue = Queue(
            f"kitty-tail.{uuid.uuid4().hex[:8]}", exchange, routing_key=pattern,
            exclusive=True, auto_delete=True, durable=False,
        )  # fmt: skip

        def on_message(body: Any, message: Any) -> None:
            nonlocal seen
            seen += 1
            click.echo(_event_line(message, as_json))

        with connection.Consumer(queue, callbacks=[on_message], accept=["json"], no_ack=True):
            # On stderr, so that --json output stays pure; scripts can wait for this line.
            click.echo(f"listening for {pattern!r} on {EVENTS_EXCHANGE} (Ctrl-C to stop)", err=True)
            idle_since = time.monotonic()
            try:
                while count is None or seen < count:
                    before = seen
                    with contextlib.suppress(TimeoutError):
                        connection.drain_events(timeout=1.0)
                    if seen != before:
                        idle_since = time.monotonic()
                    elif timeout is not None and time.monotonic() - idle_since >= timeout:
                        break
            except KeyboardInterrupt:
                pass


@click.group()
def rpc() -> None:
    """Call RPC services over direct reply-to."""


@rpc.command("call")
@click.argument("service")
@click.option("--payload", "payload_text", default="{}", help="Request payload as a JSON object.")
@click.option("--method", default=None, help="Method of the service (default: its handler).")
@click.option(
    "--timeout", type=click.FloatRange(min=0, min_open=True), default=30.0, show_default=True,
    help="Seconds to wait for the reply.",
)  # fmt: skip
@click.option("--json", "as_json", is_flag=True, help="Print the reply as JSON.")
@click.pass_context
def rpc_call(
    ctx: click.Context,
    *,
    service: str,
    payload_text: str,
    method: str | None,
    timeout: float,
    as_json: bool,
) -> None:
    """Call SERVICE with a JSON payload and print its result (exit 1 on a remote error)."""
    payload = json_object(payload_text, "--payload")
    started = time.monotonic()
    with operator_errors(), RPCClient(ctx.obj["url"]) as client:
        result = client.call(service, payload, timeout=timeout, method=method)
    elapsed = time.monotonic() - started
    if as_json:
        echo_json({"service": service, "method": method, "result": result, "seconds": elapsed})
    else:
        click.echo(json.dumps(result, indent=2, default=str))
