"""Traces of a task across nodes (OpenTelemetry): the HTTP request that submits it on an API node, then on the worker
that runs it its queue wait, claim, model load, denoising, each image's encode and upload, the settle of its
outcome, and each callback attempt, as one trace. The W3C `traceparent` of the submitting request travels in the
task row (`Task.traceparent`, and each callback delivery's), so a worker on another machine continues the API
node's trace.

Off by default, at no cost: without the standard OTEL_* environment naming an exporter, nothing here imports
OpenTelemetry and every call returns at once. With `OTEL_EXPORTER_OTLP_ENDPOINT` (or `..._TRACES_ENDPOINT`, or
`OTEL_TRACES_EXPORTER=otlp`) spans go out over OTLP/HTTP in batches, configured by the OTEL_* variables as every
OpenTelemetry SDK reads them (`OTEL_SERVICE_NAME`, `OTEL_EXPORTER_OTLP_HEADERS`, `OTEL_BSP_SCHEDULE_DELAY`...);
`OTEL_TRACES_EXPORTER=console` prints them; `OTEL_SDK_DISABLED=true` keeps them off.

Phases the worker measures where no span can stay open around them (the queue wait, work on the generation thread,
a finishing task) are recorded after the fact with their measured times (`record`)."""

from __future__ import annotations

import atexit
import contextlib
import os
from collections.abc import Iterator
from datetime import datetime
from typing import Any

# The TracerProvider spans go to: set by configure() (from the environment) or a test (use_provider); None: off.
_provider: Any = None


def enabled(environ: dict[str, str] | None = None) -> bool:
    """Whether the OTEL_* environment asks for traces."""
    env = dict(os.environ) if environ is None else environ
    if env.get("OTEL_SDK_DISABLED", "").lower() == "true":
        return False
    exporter = env.get("OTEL_TRACES_EXPORTER", "").lower()
    if exporter:
        return exporter != "none"
    return bool(env.get("OTEL_EXPORTER_OTLP_ENDPOINT") or env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"))


def configure(role: str, environ: dict[str, str] | None = None) -> bool:
    """Start exporting this process's spans when the environment asks for it (`role`: api, all or worker, a resource
    attribute beside OTEL_SERVICE_NAME, default "sdapi"); return whether it does. Spans still queued are sent when
    the process exits."""
    env = dict(os.environ) if environ is None else environ
    if not enabled(env):
        return False
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SpanExporter

    resource = Resource.create({"service.name": env.get("OTEL_SERVICE_NAME", "sdapi"), "sdapi.role": role})
    provider = TracerProvider(resource=resource)
    exporter: SpanExporter
    if env.get("OTEL_TRACES_EXPORTER", "").lower() == "console":
        exporter = ConsoleSpanExporter()
    else:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        exporter = OTLPSpanExporter()  # endpoint, headers, timeout: from OTEL_EXPORTER_OTLP_*
    provider.add_span_processor(BatchSpanProcessor(exporter))
    use_provider(provider)
    atexit.register(provider.shutdown)
    return True


def use_provider(provider: Any) -> None:
    """Send sdapi's spans to `provider` (configure's, or a test's with an in-memory exporter); None: off."""
    global _provider
    _provider = provider


def current_traceparent() -> str | None:
    """The W3C traceparent of the current span (None when tracing is off): what a task row carries."""
    if _provider is None:
        return None
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    carrier: dict[str, str] = {}
    TraceContextTextMapPropagator().inject(carrier)
    return carrier.get("traceparent")


def current_trace_id() -> str | None:
    """The trace id of the span current here (an HTTP request's), when one is recording."""
    if _provider is None:
        return None
    from opentelemetry import trace

    context = trace.get_current_span().get_span_context()
    return f"{context.trace_id:032x}" if context.is_valid else None


def trace_id_of(traceparent: str | None) -> str | None:
    """The trace id (32 hex digits) of a traceparent, for log lines."""
    parts = (traceparent or "").split("-")
    return parts[1] if len(parts) == 4 and len(parts[1]) == 32 else None


def _context_of(traceparent: str | None) -> Any:
    if not traceparent:
        return None
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    return TraceContextTextMapPropagator().extract({"traceparent": traceparent})


def _nanoseconds(moment: datetime | float) -> int:
    return int((moment.timestamp() if isinstance(moment, datetime) else moment) * 1e9)


def record(
    name: str, traceparent: str | None, started: datetime | float, ended: datetime | float, **attributes: Any
) -> None:
    """A span already over (`started`/`ended`: datetimes or epoch seconds) in the trace `traceparent` names (a
    task's): for phases whose times are measured where no span can stay open around them."""
    if _provider is None or traceparent is None:
        return
    tracer = _provider.get_tracer("sdapi")
    span = tracer.start_span(
        name, context=_context_of(traceparent), start_time=_nanoseconds(started), attributes=attributes
    )
    span.end(end_time=_nanoseconds(ended))


@contextlib.contextmanager
def server_span(name: str, traceparent: str | None, **attributes: Any) -> Iterator[Any]:
    """The span of an HTTP request around its handling, current inside it (continuing the client's trace when it
    sent a `traceparent`); None inside when tracing is off."""
    if _provider is None:
        yield None
        return
    from opentelemetry.trace import SpanKind

    tracer = _provider.get_tracer("sdapi")
    context = _context_of(traceparent)
    with tracer.start_as_current_span(name, context=context, kind=SpanKind.SERVER, attributes=attributes) as span:
        yield span
