"""What each console page shows, read from the broker with the CLI's own functions (blocking)."""

from __future__ import annotations

import contextlib
import functools
import json
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from kitty_tasks.core.connection import connected, safe_url, vhost_of
from kitty_tasks.core.declarer import Difference, compare_topology
from kitty_tasks.core.errors import KittyError
from kitty_tasks.core.management import ManagementClient, ManagementError
from kitty_tasks.core.topology import DLX_QUEUE, H_TRACEBACK, TOPOLOGY
from kitty_tasks.ops.dlq import DeadLetter, TriageGroup, group_by_cause
from kitty_tasks.ops.health import HealthReport, check_health
from kitty_tasks.ops.queues import is_dead_letter_queue, queue_stats
from kitty_tasks.ops.replay import (
    DlqSummary,
    ReplayReport,
    Selector,
    list_dlqs,
    peek,
    peek_message,
    purge,
    replay,
    replay_target,
)

__all__ = [
    "ConsoleConfig",
    "InputError",
    "MessageView",
    "Triage",
    "check_dlq_name",
    "dead_letter_queues",
    "message_view",
    "overview",
    "replay_scope",
    "run_purge",
    "run_replay",
    "topology_view",
    "triage",
]

#: Largest body shown on a message's page; the rest is cut (a DLQ holds what anyone sent).
BODY_SHOWN = 64 * 1024
#: Seconds the overview waits for workers to answer Celery's ping.
PING_TIMEOUT = 0.5


class InputError(KittyError):
    """A request the console cannot act on: a bad form field or queue name (HTTP 400)."""


@dataclass(frozen=True)
class ConsoleConfig:
    """Where the console reads from and what it may do."""

    url: str
    management_url: str
    read_only: bool = False
    #: Dead letters decoded from a DLQ's head to group them: the page never reads more.
    scan_limit: int = 10_000
    #: Rows of a DLQ's message list per page.
    page_size: int = 50

    @property
    def vhost(self) -> str:
        """The vhost of the broker URL."""
        return vhost_of(self.url)

    @property
    def broker(self) -> str:
        """The broker URL without its password, fit for a page."""
        return safe_url(self.url)

    def management(self) -> ManagementClient:
        """A management API client with the broker URL's credentials."""
        return ManagementClient.from_urls(self.management_url, self.url)


@functools.lru_cache(maxsize=4)
def _control_app(url: str) -> Any:
    # A bare app on the console's own broker URL: the platform's app answers pings only on
    # the URL it was configured with (RABBITMQ_URL), even when handed another connection.
    from celery import Celery  # noqa: PLC0415 - only the overview asks the workers

    return Celery("kitty-console", broker=url, set_as_current=False)


def _ping_workers(config: ConsoleConfig) -> list[str]:
    replies = _control_app(config.url).control.ping(timeout=PING_TIMEOUT) or []
    return sorted(name for reply in replies for name in reply)


def overview(config: ConsoleConfig) -> dict[str, Any]:
    """Health (the CLI's verdict and reasons), the workers, and a red/amber/green summary."""
    try:
        with connected(config.url) as connection:
            report = check_health(
                connection, config.management(), config.vhost, broker=config.broker
            )
    except KittyError as err:
        report = HealthReport(vhost=config.vhost, broker=config.broker)
        report.problems.append(" ".join(str(err).split()))
    workers: list[str] = []
    if report.queues:
        try:
            workers = _ping_workers(config)
        except Exception as err:  # the worker list is extra: the page shows without it
            report.warnings.append(f"cannot ask the workers: {err}")
    light = "red" if report.problems else "amber" if report.warnings else "green"
    return {"report": report, "workers": workers, "light": light}


def dead_letter_queues(config: ConsoleConfig) -> list[DlqSummary]:
    """Every DLQ of the vhost with its depth and the age of its oldest message."""
    try:
        names = [str(q["name"]) for q in config.management().queues(config.vhost)]
    except ManagementError:
        names = [q.name for q in TOPOLOGY.queues if is_dead_letter_queue(q.name)]
    with connected(config.url) as connection:
        return list_dlqs(connection, names)


def check_dlq_name(name: str) -> str:
    """``name`` when it names a dead-letter queue; else ``InputError``."""
    if not is_dead_letter_queue(name):
        raise InputError(f"{name!r} is not a dead-letter queue (<queue>.dlq or {DLX_QUEUE})")
    return name


@dataclass
class Triage:
    """A DLQ's page: its depth, the head that was scanned, and the groups found there."""

    queue: str
    depth: int
    letters: list[DeadLetter]
    groups: list[TriageGroup] = field(default_factory=list)

    @property
    def scanned_all(self) -> bool:
        """True when the scan reached the end of the queue."""
        return len(self.letters) >= self.depth


def triage(config: ConsoleConfig, name: str) -> Triage:
    """Group the first ``scan_limit`` dead letters of ``name``; each is peeked, never moved."""
    check_dlq_name(name)
    with connected(config.url) as connection:
        depth = queue_stats(connection, name).messages
        letters = peek(connection, name, limit=config.scan_limit)
    return Triage(name, depth, letters, group_by_cause(letters))


@dataclass(frozen=True)
class MessageView:
    """One dead letter as its page shows it: decoded, with its headers and traceback."""

    letter: DeadLetter
    body: str
    body_cut: bool
    properties: str
    headers: str
    traceback: str


def _text(value: Any) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    return "" if value is None else str(value)


def _dump(value: Any) -> str:
    return json.dumps(value, indent=2, sort_keys=True, default=_text, ensure_ascii=False)


def _pretty_body(body: bytes | str) -> tuple[str, bool]:
    raw = _text(body)
    with contextlib.suppress(ValueError):  # not JSON: shown as the text it is
        raw = json.dumps(json.loads(raw), indent=2, ensure_ascii=False, default=str)
    return raw[:BODY_SHOWN], len(raw) > BODY_SHOWN


def message_view(config: ConsoleConfig, name: str, position: int) -> MessageView | None:
    """The dead letter at ``position`` of ``name``; None when the queue is shorter now."""
    check_dlq_name(name)
    with connected(config.url) as connection:
        found = peek_message(connection, name, position)
    if found is None:
        return None
    letter, message = found
    properties = dict(message.properties)
    headers = dict(properties.pop("application_headers", None) or {})
    traceback = _text(headers.pop(H_TRACEBACK, ""))
    body, cut = _pretty_body(message.body)
    return MessageView(letter, body, cut, _dump(properties), _dump(headers), traceback)


def replay_scope(fields: dict[str, str]) -> tuple[str, Selector | None]:
    """What a replay form asks for: a description and the selector (None: every message)."""
    scope = fields.get("scope", "all")
    if scope == "all":
        return "every dead letter", None
    if scope == "group":
        error, kind = fields.get("error_type", ""), fields.get("type", "")
        if not error or not kind:
            raise InputError("a group replay needs both error_type and type")
        return f"the {error} dead letters of {kind}", (
            lambda letter: letter.error_type == error and letter.type == kind
        )
    if scope == "message":
        ident = fields.get("id", "")
        if not ident:
            raise InputError("a one-message replay needs the message's id")
        return f"message {ident}", lambda letter: letter.id == ident
    raise InputError(f"unknown replay scope {scope!r}: all, group or message")


def run_replay(
    config: ConsoleConfig, name: str, fields: dict[str, str], *, dry_run: bool
) -> tuple[str, ReplayReport]:
    """Dry-run or run the CLI's replay on ``name`` for the form's scope."""
    check_dlq_name(name)
    described, select = replay_scope(fields)
    to = fields.get("to") or None
    try:
        replay_target(name, to)
    except ValueError as err:
        raise InputError(str(err)) from err
    with connected(config.url) as connection:
        queue_stats(connection, name)  # QueueNotFound (404) before anything else
        report = replay(connection, name, to=to, select=select, dry_run=dry_run)
    return described, report


def left_reasons(report: ReplayReport) -> list[tuple[str, int]]:
    """Why messages stayed, with how many stayed for each reason."""
    return Counter(why for _, why in report.left).most_common()


def run_purge(config: ConsoleConfig, name: str, typed: str) -> int:
    """Purge ``name`` when the operator typed its name exactly; returns how many went."""
    check_dlq_name(name)
    if typed != name:
        raise InputError(f"type the queue's name, {name}, to purge it; nothing was deleted")
    with connected(config.url) as connection:
        queue_stats(connection, name)
        return purge(connection, name)


def topology_view(config: ConsoleConfig) -> dict[str, Any]:
    """The code's exchanges and queues, each with the broker's drift from it (if any)."""
    differences: list[Difference] = compare_topology(config.management(), config.vhost)
    drift: dict[tuple[str, str], list[Difference]] = {}
    for difference in differences:
        entity, name = difference.entity, difference.name
        if entity == "binding":  # "exchange -> queue": shown on the queue's row
            entity, name = "queue", name.split(" -> ")[-1]
        drift.setdefault((entity, name), []).append(difference)
    rows = [
        ("exchange", ex.name, ex.type, ex.arguments, drift.get(("exchange", ex.name), []))
        for ex in TOPOLOGY.exchanges
    ] + [
        (
            "queue",
            q.name,
            ", ".join(f"{b.exchange} [{b.routing_key or '-'}]" for b in q.bindings),
            q.arguments,
            drift.get(("queue", q.name), []),
        )
        for q in TOPOLOGY.queues
    ]
    return {"differences": differences, "rows": rows, "drifted": set(drift)}
