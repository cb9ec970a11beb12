"""Tracing: OpenTelemetry spans, metrics and W3C trace context for every publish and consume.

The one place that decides whether tracing is on and that the publish and consume paths
call (docs/tracing.md); ``core/otel.py`` holds the OpenTelemetry side. Off, every function
here is a global read and a return: OpenTelemetry is never imported and no header is
added. On (``KITTY_TRACING=true``, or an ``OTEL_*`` exporter configured), publishes call
``start_send`` and consumers ``start_process``.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from kitty_tasks.core.topology import H_TRACEPARENT

__all__ = [
    "DEFAULT_EXCHANGE",
    "NO_PROCESS",
    "NO_SEND",
    "REPLY_TO",
    "Process",
    "Send",
    "destination",
    "disable",
    "enable",
    "enabled",
    "error_type",
    "failed",
    "processing",
    "reset",
    "sending",
    "shutdown",
    "start_process",
    "start_send",
    "trace_id_of",
    "wanted",
]

logger = logging.getLogger(__name__)

#: The conventions' name for the default exchange, which has none.
DEFAULT_EXCHANGE = "amq.default"
#: Direct reply-to's pseudo-queue: a reply's routing key is it plus a per-channel suffix.
REPLY_TO = "amq.rabbitmq.reply-to"

_TRUE = frozenset({"1", "true", "yes", "on"})


class _State:
    """This process's decision: None until first use, False when off, else the live tracer."""

    live: Any = None
    lock = threading.Lock()


_STATE = _State()


def wanted(environ: Mapping[str, str] | None = None) -> bool:
    """Whether the environment asks for tracing: ``KITTY_TRACING``, else an OTEL exporter set."""
    env = os.environ if environ is None else environ
    flag = env.get("KITTY_TRACING", "").strip().lower()
    if flag:
        return flag in _TRUE
    exporter = env.get("OTEL_TRACES_EXPORTER", "").strip().lower()
    if exporter:
        return exporter != "none"
    return bool(
        env.get("OTEL_EXPORTER_OTLP_ENDPOINT") or env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
    )


def _active() -> Any:
    """The live tracer, or None when tracing is off; decided on first use."""
    live = _STATE.live
    if live is None:
        live = _decide()
    return live or None


def enabled() -> bool:
    """True when spans are being made in this process."""
    return _active() is not None


def _otel() -> Any:
    # Imported here and only here: loading OpenTelemetry is the cost tracing-off never pays.
    from kitty_tasks.core import otel  # noqa: PLC0415

    return otel


def _decide() -> Any:
    with _STATE.lock:
        if _STATE.live is not None:
            return _STATE.live
        if not wanted():
            _STATE.live = False
        elif not _installed():
            logger.warning(
                "tracing asked for (KITTY_TRACING or OTEL_*) but OpenTelemetry is not "
                "installed: pip install 'kitty-tasks[otel]'; tracing stays off"
            )
            _STATE.live = False
        else:
            _STATE.live = _otel().Otel.from_env()
        return _STATE.live


def _installed() -> bool:
    """True when the OpenTelemetry SDK can be imported (found, not imported)."""
    try:
        return importlib.util.find_spec("opentelemetry.sdk") is not None
    except (ImportError, ValueError):  # a parent package blocked or half-installed
        return False


def enable(tracer_provider: Any = None, meter_provider: Any = None) -> None:
    """Turn tracing on with these providers (default: built from the ``OTEL_*`` variables)."""
    otel = _otel()
    live = (
        otel.Otel.from_env()
        if tracer_provider is None
        else otel.Otel(tracer_provider, meter_provider, owned=False)
    )
    with _STATE.lock:
        _STATE.live = live


def disable() -> None:
    """Turn tracing off in this process (a provider built here is flushed first)."""
    shutdown()
    with _STATE.lock:
        _STATE.live = False


def reset() -> None:
    """Forget the decision: the next publish or consume reads the environment again.

    A prefork worker's child calls it after fork (``worker_process_init``), so that it
    builds its own provider and export thread rather than use the parent's.
    """
    with _STATE.lock:
        _STATE.live = None


def shutdown() -> None:
    """Flush and close the providers built here (workers call it on their way out)."""
    live = _STATE.live
    if live:
        live.shutdown()


def destination(exchange: str, routing_key: str, queue: str | None = None) -> str:
    """``{exchange}:{routing_key}`` when sending, ``{exchange}:{routing_key}:{queue}`` receiving."""
    if routing_key.startswith(REPLY_TO):
        routing_key = REPLY_TO  # the suffix names one channel: unbounded cardinality
    parts = [exchange or DEFAULT_EXCHANGE, routing_key]
    if queue is not None:
        parts.append(REPLY_TO if queue.startswith(REPLY_TO) else queue)
    return ":".join(parts)


def error_type(exc: BaseException) -> str:
    """``error.type`` of an exception: its fully qualified class name (builtins unqualified)."""
    kind = type(exc)
    module = kind.__module__
    return kind.__qualname__ if module == "builtins" else f"{module}.{kind.__qualname__}"


def trace_id_of(headers: Mapping[str, Any] | None) -> str | None:
    """The trace id in a message's ``traceparent`` header, or None (no OpenTelemetry needed)."""
    value = (headers or {}).get(H_TRACEPARENT)
    if isinstance(value, bytes):
        value = value.decode("ascii", "replace")
    if not isinstance(value, str):
        return None
    parts = value.split("-")
    if len(parts) < 4 or len(parts[1]) != 32 or parts[1] == "0" * 32:
        return None
    return parts[1]


class Send:
    """One publish being traced: its W3C headers, ended once with the outcome."""

    __slots__ = ("_otel", "attributes", "headers", "span", "started")

    def __init__(self, otel: Any = None, span: Any = None, attributes: Any = None) -> None:
        self._otel = otel
        self.span = span
        self.attributes = attributes
        #: ``traceparent`` (and ``tracestate``) to put on the message; empty when off.
        self.headers: dict[str, str] = {}
        self.started = time.monotonic() if otel is not None else 0.0

    @property
    def traceparent(self) -> str | None:
        """The W3C trace context of this publish, or None when tracing is off."""
        return self.headers.get(H_TRACEPARENT)

    def end(self, error: BaseException | None = None) -> None:
        """End the span (with ``error.type`` when ``error``), count the message sent."""
        if self._otel is not None:
            self._otel.end_send(self, error)
            self._otel = None


class Process:
    """One delivery being processed: its span is current until ``end``."""

    __slots__ = ("_otel", "attributes", "error", "span", "started", "token")

    def __init__(self, otel: Any = None, span: Any = None, attributes: Any = None) -> None:
        self._otel = otel
        self.span = span
        self.attributes = attributes
        self.token: Any = None
        #: ``error.type`` of a failure the consumer settled itself (``failed``).
        self.error: str | None = None
        self.started = time.monotonic() if otel is not None else 0.0

    def end(self, error: BaseException | None = None) -> None:
        """Detach and end the span, recording ``error``; counts the message consumed."""
        if self._otel is not None:
            self._otel.end_process(self, error)
            self._otel = None


#: What the functions below hand out while tracing is off: ending them does nothing.
NO_SEND = Send()
NO_PROCESS = Process()


def start_send(
    exchange: str,
    routing_key: str,
    *,
    message_id: str | None = None,
    conversation_id: str | None = None,
    parent: str | None = None,
    client: bool = False,
) -> Send:
    """Start a ``send`` span for one publish; its ``headers`` carry the W3C context.

    The span is a child of the current span; with none, of ``parent`` (a traceparent
    already on the message, e.g. an event's envelope). ``client``: an RPC call, whose
    span lasts until the reply (kind CLIENT). Off, a shared no-op ``Send``.
    """
    otel = _active()
    if otel is None:
        return NO_SEND
    send: Send = otel.start_send(
        exchange,
        routing_key,
        message_id=message_id,
        conversation_id=conversation_id,
        parent=parent,
        client=client,
    )
    return send


def start_process(
    headers: Mapping[str, Any] | None,
    *,
    exchange: str,
    routing_key: str,
    queue: str,
    message_id: str | None = None,
    conversation_id: str | None = None,
    link: bool = False,
    attempt: int | None = None,
    fallback: str | None = None,
) -> Process:
    """Start the current ``process`` span of one delivery, from the producer's context.

    A child of the producer's span, or (``link``) a new trace linked to it. ``fallback``
    is a traceparent read elsewhere when the headers have none (an event's envelope).
    """
    otel = _active()
    if otel is None:
        return NO_PROCESS
    process: Process = otel.start_process(
        headers,
        exchange=exchange,
        routing_key=routing_key,
        queue=queue,
        message_id=message_id,
        conversation_id=conversation_id,
        link=link,
        attempt=attempt,
        fallback=fallback,
    )
    return process


@contextmanager
def sending(exchange: str, routing_key: str, **options: Any) -> Iterator[Send]:
    """``start_send`` as a block: ended with the block's exception, if any."""
    send = start_send(exchange, routing_key, **options)
    try:
        yield send
    except BaseException as exc:
        send.end(exc)
        raise
    send.end()


@contextmanager
def processing(headers: Mapping[str, Any] | None, **options: Any) -> Iterator[Process]:
    """``start_process`` as a block: ended with the block's exception, if any."""
    process = start_process(headers, **options)
    try:
        yield process
    except BaseException as exc:
        process.end(exc)
        raise
    process.end()


def failed(exc: BaseException, outcome: str | None = None) -> None:
    """Mark the current span failed with ``exc`` (a handler's error the consumer settles)."""
    otel = _active()
    if otel is not None:
        otel.fail_current(exc, outcome)
