"""The tracing switch and the conventions' names, without a broker."""

from __future__ import annotations

import pytest

from kitty_tasks.core import tracing


@pytest.mark.parametrize(
    ("environ", "on"),
    [
        ({}, False),
        ({"KITTY_TRACING": "true"}, True),
        ({"KITTY_TRACING": "false", "OTEL_TRACES_EXPORTER": "otlp"}, False),
        ({"OTEL_TRACES_EXPORTER": "console"}, True),
        ({"OTEL_TRACES_EXPORTER": "none", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318"}, False),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"}, True),
        ({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://collector:4318/v1/traces"}, True),
        ({"OTEL_SERVICE_NAME": "brain"}, False),
    ],
)
def test_tracing_is_on_when_asked_or_when_an_exporter_is_configured(
    environ: dict[str, str], on: bool
) -> None:
    assert tracing.wanted(environ) is on


def test_destinations_follow_the_rabbitmq_conventions() -> None:
    assert tracing.destination("kitty.events", "fabrication.print.started") == (
        "kitty.events:fabrication.print.started"
    )
    assert tracing.destination("", "research.tasks", "research.tasks") == (
        "amq.default:research.tasks:research.tasks"
    )
    # A direct reply-to key names one channel: the pseudo-queue keeps cardinality bounded
    assert tracing.destination("", "amq.rabbitmq.reply-to.g1h2AA==.xyz") == (
        "amq.default:amq.rabbitmq.reply-to"
    )


def test_error_types_are_qualified_class_names() -> None:
    assert tracing.error_type(KeyError("x")) == "KeyError"
    assert tracing.error_type(tracing_error()) == "tests.unit.test_tracing_names.Boom"


class Boom(Exception):
    """A project error."""


def tracing_error() -> Boom:
    """An error of a module of ours."""
    return Boom("x")


@pytest.mark.parametrize(
    ("headers", "trace_id"),
    [
        ({"traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"},
         "0af7651916cd43dd8448eb211c80319c"),
        ({"traceparent": b"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"},
         "0af7651916cd43dd8448eb211c80319c"),
        ({"traceparent": "00-00000000000000000000000000000000-b7ad6b7169203331-01"}, None),
        ({"traceparent": "garbage"}, None),
        ({}, None),
        (None, None),
    ],
)  # fmt: skip
def test_a_dead_letters_trace_id_is_read_from_its_traceparent(
    headers: dict[str, object] | None, trace_id: str | None
) -> None:
    assert tracing.trace_id_of(headers) == trace_id


def test_off_handles_do_nothing_and_add_no_headers() -> None:
    assert tracing.NO_SEND.headers == {}
    assert tracing.NO_SEND.traceparent is None
    tracing.NO_SEND.end(RuntimeError("ignored"))
    tracing.NO_PROCESS.end()
