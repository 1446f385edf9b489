"""OpenTelemetry traces across the API, the queue, the workers and every delivery (issue 25;
docs/OBSERVABILITY.md "Traces").

Configured by the standard ``OTEL_*`` variables and **off unless an exporter is named**:
``OTEL_TRACES_EXPORTER=otlp`` (OTLP over HTTP/protobuf; ``OTEL_EXPORTER_OTLP_ENDPOINT``,
``OTEL_EXPORTER_OTLP_HEADERS``, … are read by the exporter itself) or ``console``; several
comma-separated. ``OTEL_SDK_DISABLED=true`` or ``none`` turns it off; ``OTEL_SERVICE_NAME`` and
``OTEL_RESOURCE_ATTRIBUTES`` name the process; ``OTEL_TRACES_SAMPLER`` samples. Off, the
OpenTelemetry API is a no-op and requests without a ``traceparent`` open no span at all.

The trace crosses the Postgres outbox explicitly, not through the broker alone: the W3C
``traceparent`` of the request that created a job is stored on its row (``analyses.traceparent``)
and on every event (``events.traceparent``), so a worker that claims the job after a retry, a
sweep or a lost wake-up, and every delivery of its events, continues the same trace. Each
delivery sends ``traceparent`` to its receiver (``inject``). Off or on, an incoming
``traceparent`` is honoured: with tracing off the stored value is the caller's own, so the
receiver still sees the caller's trace id.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Iterator, Mapping, MutableMapping
from contextlib import contextmanager
from datetime import datetime
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import Span, SpanKind, Tracer, TracerProvider
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

log = logging.getLogger(__name__)

TRACEPARENT = "traceparent"
TRACER_NAME = "dermasentinel"
# version-traceid-parentid-flags, lower-case hex (W3C Trace Context, level 1).
_TRACEPARENT = re.compile(r"^[0-9a-f]{2}-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}$")
# Only W3C trace context goes to receivers: never baggage (it could carry what a caller put there).
_W3C = TraceContextTextMapPropagator()

_enabled = False
_provider_override: TracerProvider | None = None  # tests: an SDK provider with an in-memory exporter


def exporters_named(environ: Mapping[str, str] | None = None) -> list[str]:
    """The exporters ``OTEL_TRACES_EXPORTER`` names; empty when tracing is off."""
    environ = os.environ if environ is None else environ
    if environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return []
    names = [name.strip().lower() for name in environ.get("OTEL_TRACES_EXPORTER", "").split(",")]
    return [name for name in names if name and name != "none"]


def configure_tracing(service_name: str, environ: Mapping[str, str] | None = None) -> bool:
    """Install the SDK's tracer provider when an exporter is named; True when traces are on.
    Once per process (the API factory and each worker call it; later calls do nothing). A
    prefork pool's children inherit it: the SDK's batch processor restarts its thread after
    a fork."""
    global _enabled
    if _enabled:
        return True
    names = exporters_named(environ)
    if not names:
        return False
    from opentelemetry.sdk.resources import SERVICE_NAME, Resource
    from opentelemetry.sdk.trace import TracerProvider as SdkTracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SpanExporter

    environ = os.environ if environ is None else environ
    attributes = {} if environ.get("OTEL_SERVICE_NAME") else {SERVICE_NAME: service_name}
    provider = SdkTracerProvider(resource=Resource.create(attributes))  # reads OTEL_RESOURCE_ATTRIBUTES, sampler
    for name in names:
        exporter: SpanExporter
        if name == "console":
            exporter = ConsoleSpanExporter()
        elif name == "otlp":
            protocol = environ.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL") or environ.get("OTEL_EXPORTER_OTLP_PROTOCOL")
            if protocol and protocol != "http/protobuf":
                log.warning("OTEL_EXPORTER_OTLP_PROTOCOL=%s is not shipped; sending http/protobuf", protocol)
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

            exporter = OTLPSpanExporter()
        else:
            log.warning("OTEL_TRACES_EXPORTER names %r, which is not shipped (otlp, console); ignored", name)
            continue
        provider.add_span_processor(BatchSpanProcessor(exporter))
    trace.set_tracer_provider(provider)
    _enabled = True
    log.info("traces on (%s)", ", ".join(names))
    return True


def enabled() -> bool:
    return _enabled or _provider_override is not None


def use_provider(provider: TracerProvider | None) -> None:
    """Tests: send this module's spans to ``provider`` (None: back to the global one) without
    touching the process-wide provider, which OpenTelemetry lets be set once."""
    global _provider_override
    _provider_override = provider


def tracer() -> Tracer:
    provider = _provider_override or trace.get_tracer_provider()
    return provider.get_tracer(TRACER_NAME)


# ---------------------------------------------------------------- carrying the context

def valid(traceparent: str | None) -> bool:
    """A well-formed W3C ``traceparent`` with a non-zero trace id and parent id."""
    if not traceparent or not _TRACEPARENT.match(traceparent):
        return False
    return traceparent[3:35] != "0" * 32 and traceparent[36:52] != "0" * 16


def trace_id_of(traceparent: str | None) -> str | None:
    return traceparent[3:35] if traceparent and valid(traceparent) else None


def current_traceparent() -> str | None:
    """The W3C ``traceparent`` of the current span (on or off: off, the caller's own), or None."""
    carrier: dict[str, str] = {}
    _W3C.inject(carrier)
    value = carrier.get(TRACEPARENT)
    return value if valid(value) else None


def within(traceparent: str | None) -> str | None:
    """The current span's ``traceparent`` when it belongs to ``traceparent``'s trace (a worker's
    stage span), else ``traceparent`` itself: what an event of that job is stored with."""
    current = current_traceparent()
    if current and trace_id_of(current) == trace_id_of(traceparent):
        return current
    return traceparent if valid(traceparent) else current


def context_of(traceparent: str | None) -> otel_context.Context | None:
    """The context a stored ``traceparent`` names (its span as a remote parent), or None."""
    if not valid(traceparent):
        return None
    assert traceparent is not None
    return _W3C.extract({TRACEPARENT: traceparent})


def extract(headers: Mapping[str, str]) -> otel_context.Context | None:
    """The context of an incoming request's ``traceparent`` (and ``tracestate``), or None."""
    value = headers.get(TRACEPARENT)
    if not valid(value):
        return None
    carrier = {TRACEPARENT: value or ""}
    if headers.get("tracestate"):
        carrier["tracestate"] = headers["tracestate"]
    return _W3C.extract(carrier)


def inject(headers: MutableMapping[str, str]) -> MutableMapping[str, str]:
    """Add the current span's ``traceparent`` (and ``tracestate``) to outgoing ``headers``."""
    _W3C.inject(headers)
    return headers


# ---------------------------------------------------------------- spans

@contextmanager
def span(
    name: str,
    *,
    parent: str | otel_context.Context | None = None,
    kind: SpanKind = SpanKind.INTERNAL,
    attributes: Mapping[str, Any] | None = None,
    start: datetime | None = None,
) -> Iterator[Span]:
    """A span made current for the block. ``parent``: a stored ``traceparent`` or a context
    (None: the current span); ``start``: when it began, if before now. Off and without a
    parent, the block runs under no span at all; off with a parent, under that parent's
    (non-recording) span, so what the block stores or sends still names the parent's trace."""
    context = context_of(parent) if isinstance(parent, str) else parent
    if not enabled():
        if context is None:
            yield trace.get_current_span()
            return
        token = otel_context.attach(context)
        try:
            yield trace.get_current_span()
        finally:
            otel_context.detach(token)
        return
    with tracer().start_as_current_span(
        name, context=context, kind=kind, attributes=dict(attributes or {}), record_exception=True,
        start_time=_ns(start) if start is not None else None,
    ) as current:
        yield current


def record_span(
    name: str,
    *,
    parent: str | None = None,
    start: datetime | int | None,
    end: datetime | int | None,
    attributes: Mapping[str, Any] | None = None,
) -> None:
    """A span whose times are already known (the queue wait: submitted → claimed; a stage of a
    GPU pass), under a stored ``traceparent`` (None: the current span). Times are datetimes or
    epoch nanoseconds. Nothing when traces are off or a time is missing."""
    if not enabled() or start is None or end is None or (parent is not None and not valid(parent)):
        return
    started_ns, ended_ns = _ns(start), _ns(end)
    started = tracer().start_span(
        name, context=context_of(parent) if parent else None, attributes=dict(attributes or {}),
        start_time=started_ns,
    )
    started.end(end_time=max(started_ns, ended_ns))


def _ns(moment: datetime | int) -> int:
    return moment if isinstance(moment, int) else int(moment.timestamp() * 1_000_000_000)

