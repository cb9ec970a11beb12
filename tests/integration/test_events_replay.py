"""The audit log as a stream: replay by time to the screen, into one queue, and bad input."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone

import pytest
from kombu import Connection

from events import ConfigurationError, Event, EventBus, MemoryStore, idempotent
from events.replay import replay_events, republish
from kitty_tasks.core.connection import vhost_of
from kitty_tasks.core.management import ManagementClient
from kitty_tasks.core.topology import AUDIT_EVENTS, FABRICATION_EVENTS, H_REPLAYED_FROM
from tests.helpers import queue_counts
from tests.integration.events_helpers import Collector, consuming, drain, unique
from tests.integration.ops_support import cli, own_vhost

MIX = [
    ("fabrication.print.started", {"job": 1}),
    ("notification.user.created", {"user": "u"}),
    ("fabrication.print.completed", {"job": 1}),
    ("research.paper.found", {"doi": "10.1/x"}),
    ("fabrication.printer.offline", {"printer": "p"}),
]


def publish(url: str, events: list[Event | tuple[str, dict[str, object]]]) -> list[Event]:
    """Publish ``events`` with confirms, as the fabrication service would."""
    with EventBus(url, source="fabrication-service") as bus:
        return bus.publish_many(events)


def printed_ids(output: str) -> list[str]:
    """Event ids of the JSON lines ``--print --json`` wrote."""
    return [json.loads(line)["event_id"] for line in output.splitlines() if line.startswith("{")]


def test_print_shows_exactly_the_matching_events_of_the_last_ten_minutes_in_order(
    ops_url: str,
) -> None:
    # Given a mix of event types, one of them stamped before the window
    stale = Event(
        event_type="fabrication.print.started",
        source="fabrication-service",
        data={"job": 0},
        timestamp=datetime.now(timezone.utc) - timedelta(minutes=20),
    )
    published = publish(ops_url, [stale, *MIX, *MIX])
    expected = [e for e in published[1:] if e.event_type.startswith("fabrication.")]
    # When the operator replays the last ten minutes of fabrication events
    result = cli(
        ops_url, "events", "replay", "--since", "10m", "--pattern", "fabrication.#", "--print"
    )
    # Then exactly those are printed, one line each, oldest first; the summary goes to stderr
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert [line.split()[3] for line in lines] == [e.event_id for e in expected]
    assert lines[0].split()[1:3] == ["fabrication.print.started", "fabrication-service"]
    assert f"{len(expected)} event(s) matched; {len(published)} read" in result.stderr


def test_since_and_until_cut_by_the_events_own_time(ops_url: str) -> None:
    # Given three batches published one after the other
    first, second, third = (publish(ops_url, list(MIX)) for _ in range(3))
    # When the window starts after the first batch and ends before the third
    since = (first[-1].timestamp + timedelta(microseconds=1)).isoformat()
    until = third[0].timestamp.isoformat()
    result = cli(ops_url, "events", "replay", "--since", since, "--until", until, "--print",
                 "--json")  # fmt: skip
    # Then only the second batch is printed, as JSON lines, in order
    assert result.exit_code == 0, result.output
    assert printed_ids(result.stdout) == [e.event_id for e in second]
    # And the Python API reads the same window
    api = replay_events(ops_url, since=since, until=until, pattern="#")
    assert [e.event_id for e in api] == [e.event_id for e in second]


def test_to_queue_rebuilds_a_projection_and_idempotent_handlers_skip_what_they_saw(
    ops_url: str,
) -> None:
    # Given events published before a new projection service subscribed
    before = publish(ops_url, list(MIX))
    deliveries, runs = Collector(), Collector()
    project = idempotent(store=MemoryStore())(runs)

    def handler(event: Event) -> None:
        deliveries(event)
        project(event)

    bus = EventBus(ops_url, source=unique("projection"))
    bus.connect()
    subscription = bus.subscribe("fabrication.#", handler)
    with consuming(bus):
        # and events it handled live once it had
        live = [e for e in publish(ops_url, list(MIX)) if e.event_type.startswith("fabrication.")]
        deliveries.wait_for(lambda got: len(got) == len(live))
        shared_before = queue_counts(ops_url, FABRICATION_EVENTS)[0]
        # When the last ten minutes of fabrication events are replayed into its queue
        result = cli(ops_url, "events", "replay", "--since", "10m", "--pattern", "fabrication.#",
                     "--to-queue", subscription.queue)  # fmt: skip
        missed = [e for e in before if e.event_type.startswith("fabrication.")]
        assert result.exit_code == 0, result.output
        assert f"republished {len(missed) + len(live)} event(s) into {subscription.queue}" in (
            result.output
        )
        deliveries.wait_for(lambda got: len(got) == 2 * len(live) + len(missed))
    # Then the handler ran once for each event, live ones first, the missed ones on replay
    assert runs.ids == [e.event_id for e in live + missed]
    # And no other subscriber's queue was sent the replays
    assert queue_counts(ops_url, FABRICATION_EVENTS)[0] == shared_before


def test_republished_events_keep_body_and_id_and_are_marked(ops_url: str) -> None:
    # Given a queue of a subscriber and two events in the stream
    with EventBus(ops_url, source=unique("marks")) as bus:
        queue = bus.declare_queue(unique("marks") + ".events")
    sent = publish(ops_url, [("fabrication.print.started", {"job": 7})] * 2)
    # When the API republishes them there
    stats = republish(ops_url, queue, since=timedelta(minutes=1), pattern="fabrication.print.*")
    # Then the queue holds them as published, with the event id and the replay mark
    assert (stats.matched, stats.republished) == (2, 2)
    got = drain(ops_url, queue)
    assert [m.properties["message_id"] for m in got] == [e.event_id for e in sent]
    assert [Event.decode(m.body) for m in got] == sent
    assert all(m.headers[H_REPLAYED_FROM] == AUDIT_EVENTS for m in got)
    assert all("x-stream-offset" not in m.headers for m in got)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--since", "10x", "--print"], "'10x' is neither a duration ago"),
        (["--since", "5m", "--until", "10m", "--print"], "must be before until"),
        (["--since", "10m", "--pattern", "fabrication..#", "--print"], "is not a topic pattern"),
        (["--since", "10m"], "exactly one of --print and --to-queue"),
        (["--since", "10m", "--print", "--to-queue", "x"], "exactly one of --print"),
        (["--since", "10m", "--to-queue", "nobody.here"], "no queue 'nobody.here'"),
        (["--since", "10m", "--to-queue", AUDIT_EVENTS], "is the stream itself"),
        (["--since", "10m", "--to-queue", "research.tasks.dlq"], "dead-letter or retry queue"),
        (["--since", "2099-01-01T00:00:00Z", "--until", "2099-02-01", "--print"], "future"),
    ],
)
def test_bad_input_is_one_line_and_exit_code_2(ops_url: str, args: list[str], message: str) -> None:
    result = cli(ops_url, "events", "replay", *args)
    assert result.exit_code == 2, result.output
    assert result.stdout == ""
    (line,) = result.stderr.strip().splitlines()
    assert message in line


def test_subscribing_on_the_stream_points_at_replay(amqp_url: str) -> None:
    bus = EventBus(amqp_url, source=unique("audit"))
    with pytest.raises(ConfigurationError, match=r"is a stream .* `kitty-tasks events replay`"):
        bus.subscribe("#", print, queue=AUDIT_EVENTS)


def test_a_classic_audit_queue_is_named_and_migrated_by_delete_then_apply(
    management_client: ManagementClient,
) -> None:
    # Given a broker whose audit.events is still the classic queue of before
    with own_vhost(management_client) as url:
        with Connection(url) as connection:
            channel = connection.default_channel
            channel.queue_delete(AUDIT_EVENTS)
            channel.queue_declare(
                AUDIT_EVENTS, durable=True,
                arguments={"x-max-length": 1_000_000, "x-message-ttl": 2_592_000_000},
            )  # fmt: skip
        # When the topology is applied, verified, or the stream replayed
        applied = cli(url, "topology", "apply")
        verified = cli(url, "topology", "verify")
        replayed = cli(url, "events", "replay", "--since", "1m", "--print")
        # Then each says which queue is in the way and what to do
        assert applied.exit_code == 1
        assert "queue 'audit.events' exists with other arguments or of another type" in (
            applied.output
        )
        assert "drain it, delete it, then apply again" in applied.output
        assert verified.exit_code == 1
        assert "x-queue-type=None (code: 'stream')" in verified.output
        assert "a queue's type cannot change" in verified.output
        assert replayed.exit_code == 1
        assert "'audit.events' is not the stream the topology declares" in replayed.output
        # And the documented migration (drained: delete it, then apply) makes it a stream
        with Connection(url) as connection:
            connection.default_channel.queue_delete(AUDIT_EVENTS)
        assert cli(url, "topology", "apply").exit_code == 0
        assert cli(url, "topology", "verify").exit_code == 0
        queues = {q["name"]: q for q in management_client.queues(vhost_of(url))}
        assert queues[AUDIT_EVENTS]["type"] == "stream"
