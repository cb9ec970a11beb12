"""DLQ operations on the broker: list, peek (without losing or reordering), replay, purge."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import amqp
from kombu import Connection

from kitty_tasks.core.errors import KittyError, PublishError
from kitty_tasks.core.publisher import ConfirmedPublisher, OutgoingMessage
from kitty_tasks.core.topology import DLQ_SUFFIX, DLX_QUEUE
from kitty_tasks.ops.dlq import DeadLetter, decode_dead_letter, matches, replay_properties
from kitty_tasks.ops.queues import QueueNotFound, is_dead_letter_queue, queue_stats

__all__ = [
    "DlqSummary",
    "ReplayError",
    "ReplayReport",
    "list_dlqs",
    "oldest_age",
    "peek",
    "peek_message",
    "purge",
    "replay",
]

#: Replayed messages confirmed per round trip when no rate limit is set.
REPLAY_BATCH = 50
#: AMQP's prefetch count is 16 bits: a peek streams at most this many messages.
PEEK_PREFETCH_MAX = 65_535
#: Seconds a peek waits for the next message before it takes the queue to have shrunk.
PEEK_IDLE_TIMEOUT = 2.0

Progress = Callable[[int], None]
#: Picks dead letters beyond the glob patterns (the console's group or single message).
Selector = Callable[[DeadLetter], bool]


class ReplayError(KittyError):
    """A replay stopped part-way; what was not confirmed is still in the DLQ."""


@dataclass(frozen=True)
class DlqSummary:
    """One dead-letter queue: depth and the age of its oldest message."""

    name: str
    depth: int
    oldest_age_seconds: float | None

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        return {
            "queue": self.name,
            "depth": self.depth,
            "oldest_age_seconds": self.oldest_age_seconds,
        }


@dataclass
class ReplayReport:
    """What a replay did: moved, would move (dry run), left in the DLQ and why."""

    queue: str
    target: str | None = None
    examined: int = 0
    replayed: list[DeadLetter] = field(default_factory=list)
    would_replay: list[DeadLetter] = field(default_factory=list)
    left: list[tuple[DeadLetter, str]] = field(default_factory=list)
    dry_run: bool = False

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        return {
            "queue": self.queue,
            "target": self.target,
            "dry_run": self.dry_run,
            "examined": self.examined,
            "replayed": [letter.to_dict() for letter in self.replayed],
            "would_replay": [letter.to_dict() for letter in self.would_replay],
            "left": [{**letter.to_dict(), "why": why} for letter, why in self.left],
        }


def _properties(message: amqp.Message) -> dict[str, Any]:
    return dict(message.properties)


def peek(connection: Connection, queue: str, *, limit: int | None = None) -> list[DeadLetter]:
    """Decode up to ``limit`` messages of ``queue`` from the head, leaving them where they were.

    Each message is fetched without ack; closing the channel hands them all back,
    and RabbitMQ puts requeued messages back at their original positions. The head
    is streamed to a consumer (prefetch = what is wanted), not fetched one round trip
    at a time: 10,000 dead letters take about a second instead of ten.
    """
    depth = queue_stats(connection, queue).messages
    wanted = depth if limit is None else min(depth, limit)
    channel = connection.connection.channel()
    letters: list[DeadLetter] = []

    def take(message: amqp.Message) -> None:
        position = len(letters)
        letters.append(
            decode_dead_letter(message.body, _properties(message), dlq=queue, position=position)
        )

    try:
        streamed = min(wanted, PEEK_PREFETCH_MAX)
        if streamed:
            channel.basic_qos(0, streamed, False)
            channel.basic_consume(queue, callback=take, no_ack=False)
            while len(letters) < streamed:
                try:
                    connection.connection.drain_events(timeout=PEEK_IDLE_TIMEOUT)
                except TimeoutError:
                    break  # the queue shrank since it was counted
        # Beyond the largest prefetch the broker allows, one round trip per message.
        while streamed == PEEK_PREFETCH_MAX and len(letters) < wanted:
            message = channel.basic_get(queue, no_ack=False)
            if message is None:
                break
            take(message)
    finally:
        channel.close()
    return letters[:wanted]


def peek_message(
    connection: Connection, queue: str, position: int
) -> tuple[DeadLetter, amqp.Message] | None:
    """The message at ``position`` of ``queue``, decoded and raw; None past the end.

    Like ``peek``: nothing is acked, so closing the channel puts every message back in order.
    """
    if position < 0:
        raise ValueError(f"a position counts from 0, got {position}")
    channel = connection.connection.channel()
    try:
        for index in range(position + 1):
            message = channel.basic_get(queue, no_ack=False)
            if message is None:
                return None
            if index == position:
                properties = _properties(message)
                return decode_dead_letter(
                    message.body, properties, dlq=queue, position=position
                ), message
    finally:
        channel.close()
    return None


def oldest_age(connection: Connection, queue: str, now: float | None = None) -> float | None:
    """Age in seconds of the head (oldest) message of ``queue``; None when empty or unknown."""
    head = peek(connection, queue, limit=1)
    return head[0].age_seconds(now) if head else None


def list_dlqs(connection: Connection, names: Sequence[str]) -> list[DlqSummary]:
    """Depth and oldest age of every dead-letter queue among ``names`` that exists."""
    summaries = []
    for name in sorted(n for n in names if is_dead_letter_queue(n)):
        try:
            depth = queue_stats(connection, name).messages
        except QueueNotFound:
            continue  # deleted between the listing and now
        summaries.append(DlqSummary(name, depth, oldest_age(connection, name) if depth else None))
    return summaries


def _target_exists(connection: Connection, queue: str, known: dict[str, bool]) -> bool:
    if queue not in known:
        try:
            queue_stats(connection, queue)
            known[queue] = True
        except QueueNotFound:
            known[queue] = False
    return known[queue]


def replay_target(dlq: str, to: str | None = None) -> str | None:
    """The one queue ``dlq``'s messages may go back to: ``<queue>`` for ``<queue>.dlq``.

    The catch-all ``dlx.queue`` takes messages from anywhere, so its target is the
    operator's explicit ``to`` (None without one). A header never chooses the target:
    anyone who can publish to ``dlx`` could plant one naming another service's queue.
    """
    if dlq == DLX_QUEUE:
        return to
    if not dlq.endswith(DLQ_SUFFIX):
        raise ValueError(f"{dlq!r} is not a dead-letter queue (<queue>{DLQ_SUFFIX} or {DLX_QUEUE})")
    own = dlq[: -len(DLQ_SUFFIX)]
    if to is not None and to != own:
        raise ValueError(
            f"dead letters of {dlq!r} replay only to {own!r}, not {to!r}; "
            f"--to is for {DLX_QUEUE}, whose messages may come from anywhere"
        )
    return own


def refusal(letter: DeadLetter, target: str | None, dlq: str) -> str | None:
    """Why ``letter`` must stay in ``dlq`` rather than go to ``target``; None if it may go."""
    if target is None:
        return f"messages in {DLX_QUEUE} need an explicit target: replay with --to QUEUE"
    named = letter.original_queue
    if dlq != DLX_QUEUE and named and named != target:
        return (
            f"its header names queue {named!r}; a dead letter of {dlq!r} replays only to {target!r}"
        )
    return None


def replay(
    connection: Connection,
    queue: str,
    *,
    to: str | None = None,
    patterns: Sequence[str] = (),
    limit: int | None = None,
    dry_run: bool = False,
    rate: float | None = None,
    progress: Progress | None = None,
    select: Selector | None = None,
) -> ReplayReport:
    """Move the dead letters of ``queue`` that match ``patterns`` back to their own queue.

    ``<queue>.dlq`` replays only to ``<queue>``; ``dlx.queue`` only to ``to``
    (``replay_target``). Only the messages present when the replay starts are examined, so a message
    that dies again during the replay is not replayed twice. Each moved message
    is published to the default exchange (straight to its original queue, not
    fanned out to every subscriber again), confirmed by the broker, and only
    then acked out of the DLQ: a crash part-way leaves every unconfirmed
    message in the DLQ. Messages that do not match stay unacked until the end
    and then go back to their original positions. ``select``, when given, must also
    accept a message for it to move (a group or one message of the console).
    """
    if rate is not None and rate <= 0:
        raise ValueError(f"rate must be positive, got {rate}")
    target = replay_target(queue, to)
    report = ReplayReport(queue, target=target, dry_run=dry_run)
    depth = queue_stats(connection, queue).messages
    channel = connection.connection.channel()
    publisher = ConfirmedPublisher(connection)
    batch: list[tuple[int, OutgoingMessage, DeadLetter]] = []
    targets: dict[str, bool] = {}
    batch_size = 1 if rate is not None else REPLAY_BATCH
    started = time.monotonic()

    def flush() -> None:
        if not batch:
            return
        try:
            publisher.publish_batch([outgoing for _, outgoing, _ in batch])
        except PublishError as err:
            raise ReplayError(
                f"replay stopped after {len(report.replayed)} message(s): {err}; "
                f"the {len(batch)} unconfirmed message(s) stay in {queue!r}"
            ) from err
        for tag, _, letter in batch:
            channel.basic_ack(tag)
            report.replayed.append(letter)
        batch.clear()

    try:
        while report.examined < depth:
            if (
                limit is not None
                and len(report.replayed) + len(batch) + len(report.would_replay) >= limit
            ):
                break
            message = channel.basic_get(queue, no_ack=False)
            if message is None:
                break
            properties = _properties(message)
            letter = decode_dead_letter(
                message.body, properties, dlq=queue, position=report.examined
            )
            report.examined += 1
            if progress is not None:
                progress(1)
            if not matches(letter, patterns) or (select is not None and not select(letter)):
                report.left.append((letter, "does not match the filter"))
                continue
            why = refusal(letter, target, queue)
            if why is not None or target is None:
                report.left.append((letter, why or "no target"))
                continue
            if not _target_exists(connection, target, targets):
                report.left.append((letter, f"target queue {target!r} does not exist"))
                continue
            if dry_run:
                report.would_replay.append(letter)
                continue
            if rate is not None:
                # Pace from the start, so a slow confirm does not push the rate lower.
                due = started + len(report.replayed) / rate
                time.sleep(max(0.0, due - time.monotonic()))
            outgoing = OutgoingMessage(message.body, "", target, replay_properties(properties))
            batch.append((message.delivery_tag, outgoing, letter))
            if len(batch) >= batch_size:
                flush()
        flush()
    finally:
        publisher.close()
        # Unacked messages (skipped, dry run, unconfirmed) go back where they were.
        channel.close()
    return report


def purge(connection: Connection, queue: str) -> int:
    """Delete every ready message of ``queue``; returns how many."""
    channel = connection.connection.channel()
    try:
        count = channel.queue_purge(queue)
    finally:
        if channel.is_open:
            channel.close()
    return int(count or 0)
