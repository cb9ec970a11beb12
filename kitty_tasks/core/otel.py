"""OpenTelemetry behind ``core/tracing.py``: providers from ``OTEL_*``, spans and metrics.

Imported only once tracing is on. It is the one module that knows the messaging
semantic conventions for RabbitMQ (attribute names, span names and kinds, metric
instruments); docs/tracing.md says which version and where each name comes from.
"""

from __future__ import annotations

import atexit
import logging
import os
import time
from collections.abc import Mapping
from importlib.metadata import PackageNotFoundError, version
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import metrics, trace
from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import ConsoleMetricExporter, PeriodicExportingMetricReader
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter
from opentelemetry.trace import Link, SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from kitty_tasks.core.topology import H_TRACEPARENT, H_TRACESTATE
from kitty_tasks.core.tracing import REPLY_TO, Process, Send, destination, error_type

__all__ = ["ATTEMPT", "OUTCOME", "SCHEMA_URL", "Otel"]

logger = logging.getLogger(__name__)

#: The semantic conventions release these names follow (docs/tracing.md).
SCHEMA_URL = "https://opentelemetry.io/schemas/1.37.0"
#: ``messaging.operation.type`` values this platform emits (``receive``/``settle`` unused:
#: consumers are pushed their messages, and the process span covers the ack).
SEND, PROCESS = "send", "process"
#: The platform's own attributes: the conventions have no attempt counter or outcome.
ATTEMPT = "kitty.attempt"
OUTCOME = "kitty.outcome"
#: Span attributes that metrics carry too: the conventions keep message ids off metrics.
METRIC_KEYS = (
    "messaging.system",
    "messaging.operation.type",
    "messaging.operation.name",
    "messaging.destination.name",
)
#: Where the current ``Process`` sits in the OpenTelemetry context, for ``fail_current``.
PROCESS_KEY = otel_context.create_key("kitty-process")


class Otel:
    """A tracer, the W3C propagator and the conventions' four messaging instruments."""

    def __init__(self, tracer_provider: Any, meter_provider: Any, *, owned: bool) -> None:
        self.tracer_provider = tracer_provider
        self.meter_provider = meter_provider
        self._owned = owned
        package = _version()
        self._tracer = tracer_provider.get_tracer("kitty_tasks", package, SCHEMA_URL)
        # W3C trace context only: the wire gains traceparent/tracestate and nothing else
        # (the global propagator may carry baggage too).
        self._propagator = TraceContextTextMapPropagator()
        meter = (meter_provider or metrics.get_meter_provider()).get_meter(
            "kitty_tasks", package, SCHEMA_URL
        )
        self._duration = meter.create_histogram(
            "messaging.client.operation.duration", unit="s", description="Duration of a send."
        )
        self._sent = meter.create_counter(
            "messaging.client.sent.messages", unit="{message}", description="Messages sent."
        )
        self._consumed = meter.create_counter(
            "messaging.client.consumed.messages",
            unit="{message}",
            description="Messages delivered to a consumer.",
        )
        self._process_duration = meter.create_histogram(
            "messaging.process.duration", unit="s", description="Duration of processing."
        )

    @classmethod
    def from_env(cls) -> Otel:
        """Providers built from the standard ``OTEL_*`` variables, flushed at exit."""
        # Resource.create reads OTEL_SERVICE_NAME and OTEL_RESOURCE_ATTRIBUTES; the
        # provider reads OTEL_TRACES_SAMPLER(_ARG); the processor OTEL_BSP_*; the OTLP
        # exporters OTEL_EXPORTER_OTLP_(TRACES_|METRICS_)ENDPOINT, _HEADERS, _TIMEOUT.
        resource = Resource.create()
        provider = TracerProvider(resource=resource)
        for exporter in _span_exporters(os.environ.get("OTEL_TRACES_EXPORTER", "otlp")):
            provider.add_span_processor(BatchSpanProcessor(exporter))
        meter_provider = _meter_provider(os.environ.get("OTEL_METRICS_EXPORTER", ""), resource)
        if isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider):
            trace.set_tracer_provider(provider)  # the application's own spans join ours
        otel = cls(provider, meter_provider, owned=True)
        atexit.register(otel.shutdown)
        return otel

    def shutdown(self) -> None:
        """Flush and shut down the providers, when built here."""
        if not self._owned:
            return
        self._owned = False
        for provider in (self.tracer_provider, self.meter_provider):
            if provider is not None:
                try:
                    provider.shutdown()
                except Exception as err:  # an exporter that cannot flush must not stop a worker
                    logger.warning("tracing: could not flush on shutdown: %r", err)

    def start_send(
        self,
        exchange: str,
        routing_key: str,
        *,
        message_id: str | None,
        conversation_id: str | None,
        parent: str | None,
        client: bool,
    ) -> Send:
        """A ``send`` span (PRODUCER, or CLIENT for an RPC call) and its injected context."""
        name = destination(exchange, routing_key)
        attributes = _attributes(SEND, routing_key, name, message_id, conversation_id)
        context = None
        if parent and not trace.get_current_span().get_span_context().is_valid:
            context = self._propagator.extract({H_TRACEPARENT: parent})
        span = self._tracer.start_span(
            f"{SEND} {name}",
            context=context,
            kind=SpanKind.CLIENT if client else SpanKind.PRODUCER,
            attributes=attributes,
        )
        send = Send(self, span, attributes)
        self._propagator.inject(send.headers, context=trace.set_span_in_context(span))
        return send

    def end_send(self, send: Send, error: BaseException | None) -> None:
        """End a ``send`` span; record its duration, and count the message when it went out."""
        metric = _metric_attributes(send.attributes, error)
        if error is not None:
            _record(send.span, error)
        send.span.end()
        self._duration.record(time.monotonic() - send.started, metric)
        if error is None:
            self._sent.add(1, metric)

    def start_process(
        self,
        headers: Mapping[str, Any] | None,
        *,
        exchange: str,
        routing_key: str,
        queue: str,
        message_id: str | None,
        conversation_id: str | None,
        link: bool,
        attempt: int | None,
        fallback: str | None,
    ) -> Process:
        """A CONSUMER ``process`` span, current until it ends: child of, or linked to, the send."""
        producer = trace.get_current_span(self._propagator.extract(_carrier(headers, fallback)))
        name = destination(exchange, routing_key, queue)
        attributes = _attributes(PROCESS, routing_key, name, message_id, conversation_id)
        if attempt is not None:
            attributes[ATTEMPT] = attempt
        links = None
        if link:
            parent = otel_context.Context()  # a trace of its own, not the ambient one
            if producer.get_span_context().is_valid:
                links = [Link(producer.get_span_context())]
        else:
            parent = trace.set_span_in_context(producer)
        span = self._tracer.start_span(
            f"{PROCESS} {name}",
            context=parent,
            kind=SpanKind.CONSUMER,
            attributes=attributes,
            links=links,
        )
        process = Process(self, span, attributes)
        current = otel_context.set_value(PROCESS_KEY, process, trace.set_span_in_context(span))
        process.token = otel_context.attach(current)
        self._consumed.add(1, _metric_attributes(attributes, None))
        return process

    def end_process(self, process: Process, error: BaseException | None) -> None:
        """Detach and end a ``process`` span; record its duration with its error, if any."""
        if process.token is not None:
            otel_context.detach(process.token)
        if error is not None:
            _record(process.span, error)
        process.span.end()
        metric = _metric_attributes(process.attributes, error)
        if error is None and process.error is not None:
            metric["error.type"] = process.error
        self._process_duration.record(time.monotonic() - process.started, metric)

    def fail_current(self, exc: BaseException, outcome: str | None) -> None:
        """Record ``exc`` on the current process span (or current span) with its outcome."""
        process = otel_context.get_value(PROCESS_KEY)
        span = process.span if isinstance(process, Process) else trace.get_current_span()
        if not span.get_span_context().is_valid:
            return
        _record(span, exc)
        if isinstance(process, Process):
            process.error = error_type(exc)
        if outcome:
            span.set_attribute(OUTCOME, outcome)


def _attributes(
    operation: str,
    routing_key: str,
    name: str,
    message_id: str | None,
    conversation_id: str | None,
) -> dict[str, Any]:
    attributes: dict[str, Any] = {
        "messaging.system": "rabbitmq",
        "messaging.operation.type": operation,
        "messaging.operation.name": operation,
        "messaging.destination.name": name,
    }
    if routing_key:
        attributes["messaging.rabbitmq.destination.routing_key"] = (
            REPLY_TO if routing_key.startswith(REPLY_TO) else routing_key
        )
    if routing_key.startswith(REPLY_TO):
        attributes["messaging.destination.temporary"] = True
        attributes["messaging.destination.anonymous"] = True
    if message_id:
        attributes["messaging.message.id"] = str(message_id)
    if conversation_id:
        attributes["messaging.message.conversation_id"] = str(conversation_id)
    return attributes


def _record(span: Any, error: BaseException) -> None:
    kind = error_type(error)
    span.set_attribute("error.type", kind)
    span.record_exception(error)
    span.set_status(Status(StatusCode.ERROR, f"{kind}: {error}"[:200]))


def _metric_attributes(attributes: Mapping[str, Any], error: BaseException | None) -> Any:
    metric = {key: attributes[key] for key in METRIC_KEYS if key in attributes}
    if error is not None:
        metric["error.type"] = error_type(error)
    return metric


def _carrier(headers: Mapping[str, Any] | None, fallback: str | None) -> dict[str, str]:
    """The W3C headers of a message as text (py-amqp may hand them over as bytes)."""
    carrier: dict[str, str] = {}
    for key in (H_TRACEPARENT, H_TRACESTATE):
        value = (headers or {}).get(key)
        if isinstance(value, bytes):
            value = value.decode("ascii", "replace")
        if isinstance(value, str):
            carrier[key] = value
    if H_TRACEPARENT not in carrier and fallback:
        carrier[H_TRACEPARENT] = fallback
    return carrier


def _version() -> str | None:
    try:
        return version("kitty-tasks")
    except PackageNotFoundError:
        return None


def _names(value: str) -> list[str]:
    return [n.strip().lower() for n in value.split(",") if n.strip()]


def _span_exporters(names: str) -> list[Any]:
    """The span exporters ``OTEL_TRACES_EXPORTER`` names: otlp (HTTP), console or none."""
    exporters: list[Any] = []
    for name in _names(names):
        if name in {"otlp", "otlp_proto_http"}:
            exporters.append(OTLPSpanExporter())
        elif name == "console":
            exporters.append(ConsoleSpanExporter())
        elif name != "none":
            logger.warning("tracing: unknown OTEL_TRACES_EXPORTER %r ignored", name)
    return exporters


def _meter_provider(names: str, resource: Resource) -> MeterProvider | None:
    """A meter provider for ``OTEL_METRICS_EXPORTER`` (otlp, console); None when unset."""
    readers: list[Any] = []
    for name in _names(names):
        if name in {"otlp", "otlp_proto_http"}:
            readers.append(PeriodicExportingMetricReader(OTLPMetricExporter()))
        elif name == "console":
            readers.append(PeriodicExportingMetricReader(ConsoleMetricExporter()))
        elif name != "none":
            logger.warning("tracing: unknown OTEL_METRICS_EXPORTER %r ignored", name)
    if not readers:
        return None
    return MeterProvider(metric_readers=readers, resource=resource)
