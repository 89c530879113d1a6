"""OpenTelemetry traces across SDK -> router -> tier, when OpenTelemetry is installed.

One trace per request: the SDK sends the caller's context in gRPC metadata (W3C `traceparent`),
every tierlm gRPC server opens a SERVER span per call under it (tierlm/serving.py), and the router
opens a CLIENT span per tier call whose context travels on to the tier. Spans go wherever the
process's tracer provider sends them: `configure()` installs an OTLP exporter when the standard
OTEL_EXPORTER_OTLP_(TRACES_)ENDPOINT variable is set, and a test installs its own in-memory one.

OpenTelemetry is optional: the SDK's own install does not pull it, and without it every function
here does nothing, at no cost.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

try:
    from opentelemetry import propagate, trace
    from opentelemetry.trace import SpanKind, Status, StatusCode
except ImportError:  # pragma: no cover - exercised by the SDK-only install test
    trace = None  # type: ignore[assignment]

log = logging.getLogger(__name__)

Metadata = Sequence[tuple[str, str | bytes]]
_TRACER_NAME = "tierlm"


def enabled() -> bool:
    return trace is not None


def configure(service_name: str) -> bool:
    """Export this process's spans over OTLP (gRPC) when the standard OTEL_EXPORTER_OTLP_* endpoint
    variable is set; returns whether it did. Other OTEL_* variables (headers, sampler, resource
    attributes) apply as the OpenTelemetry SDK reads them."""
    if trace is None or not (os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT")):
        return False
    try:
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.resources import SERVICE_NAME, Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
    except ImportError:
        log.warning("OTEL_EXPORTER_OTLP_ENDPOINT is set but the OpenTelemetry SDK or OTLP exporter is not installed: "
                    "pip install 'tierlm[router]'")
        return False
    provider = TracerProvider(resource=Resource.create({SERVICE_NAME: os.environ.get("OTEL_SERVICE_NAME", service_name)}))
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    trace.set_tracer_provider(provider)
    log.info("exporting traces over OTLP as service %s", service_name)
    return True


def with_context(metadata: Metadata) -> tuple[tuple[str, str | bytes], ...]:
    """`metadata` plus the current trace context (`traceparent`, `tracestate`), for an outgoing call."""
    if trace is None:
        return tuple(metadata)
    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    return (*metadata, *carrier.items())


@contextlib.contextmanager
def server_span(method: str, metadata: Metadata | None) -> Iterator[Any]:
    """A SERVER span for one incoming RPC `/package.Service/Method`, child of the caller's context."""
    if trace is None:
        yield None
        return
    carrier: Mapping[str, str] = {k: v for k, v in metadata or () if isinstance(v, str)}
    service, _, name = method.lstrip("/").rpartition("/")
    tracer = trace.get_tracer(_TRACER_NAME)
    with tracer.start_as_current_span(
        method.lstrip("/"), context=propagate.extract(carrier), kind=SpanKind.SERVER,
        attributes={"rpc.system": "grpc", "rpc.service": service, "rpc.method": name},
    ) as span:
        yield span


@contextlib.contextmanager
def client_span(name: str, **attributes: Any) -> Iterator[Any]:
    """A CLIENT span around an outgoing call; `with_context` inside it carries it to the callee."""
    if trace is None:
        yield None
        return
    with trace.get_tracer(_TRACER_NAME).start_as_current_span(name, kind=SpanKind.CLIENT, attributes=attributes) as span:
        yield span


def set_status(span: Any, code: str, ok: bool) -> None:
    """Record a gRPC status code on a span (a no-op without OpenTelemetry or a span)."""
    if span is None:
        return
    span.set_attribute("rpc.grpc.status_code", code)
    if not ok:
        span.set_status(Status(StatusCode.ERROR, code))


def annotate(**attributes: Any) -> None:
    """Add attributes to the current span (the RPC's SERVER span inside a handler)."""
    if trace is not None:
        trace.get_current_span().set_attributes({k: v for k, v in attributes.items() if v is not None})


def event(name: str, **attributes: Any) -> None:
    if trace is not None:
        trace.get_current_span().add_event(name, {k: v for k, v in attributes.items() if v is not None})
