"""OpenTelemetry: one trace per request across SDK -> router -> tiers, with a span per tier attempt,
collected by an in-memory exporter. The SDK, router and tiers are real gRPC servers on 127.0.0.1;
the trace context crosses every hop in the calls' metadata, as it would between processes."""

from __future__ import annotations

from concurrent import futures

import grpc
import pytest
from opentelemetry import trace
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from tests.support.aio import BackgroundLoop
from tests.support.echo_server import ScriptedGenerator, start_generator
from tests.support.policies import two_tier_policy, write
from tests.support.router_process import RouterProcess, scripted_tiers
from tierlm.client import Client
from tierlm.router.serve.server import start_router
from tierlm.serving import ServerConfig


@pytest.fixture(scope="module")
def spans() -> InMemorySpanExporter:
    exporter = InMemorySpanExporter()
    provider = trace.get_tracer_provider()
    if not isinstance(provider, TracerProvider):  # the first test to need one installs it for the process
        provider = TracerProvider()
        trace.set_tracer_provider(provider)
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return exporter


def test_one_cascaded_request_is_one_trace_with_a_span_per_tier_attempt(spans, tmp_path):
    loop = BackgroundLoop()
    tiers = [loop.run(start_generator(ServerConfig(), ScriptedGenerator(name=n))) for n in ("edge", "cloud")]
    policy = write(tmp_path / "policy.yaml", two_tier_policy(tiers[0].port, tiers[1].port))
    router, service = loop.run(start_router(policy, ServerConfig(), tmp_path / "ledger.sqlite", auth=False))
    try:
        spans.clear()
        with trace.get_tracer("test").start_as_current_span("caller") as caller, Client(f"127.0.0.1:{router.port}") as client:
            answer = client.complete("a hard one", max_tokens=4)
        assert [a.tier for a in answer.trace.attempts] == ["edge", "cloud"]
    finally:
        loop.run(router.stop(grace_s=0))
        loop.run(service.store.close())
        for server in tiers:
            loop.run(server.stop(grace_s=0))
        loop.close()

    finished = [s for s in spans.get_finished_spans() if s.context.trace_id == caller.get_span_context().trace_id]
    by_name = {}
    for span in finished:
        by_name.setdefault(span.name, []).append(span)
    (routed,) = by_name["tierlm.v1.Router/Complete"]
    assert routed.kind is SpanKind.SERVER and routed.parent.span_id == caller.get_span_context().span_id
    assert routed.attributes["rpc.service"] == "tierlm.v1.Router" and routed.attributes["rpc.grpc.status_code"] == "OK"
    assert routed.attributes["tierlm.accepted_tier"] == "cloud" and routed.attributes["tierlm.cost"] > 0
    assert [e.attributes["tierlm.tier"] for e in routed.events if e.name == "tier attempt"] == ["edge", "cloud"]
    attempts = by_name["tier edge"] + by_name["tier cloud"]
    assert len(attempts) == 2  # one span per tier attempt, children of the router's span
    for attempt in attempts:
        assert attempt.kind is SpanKind.CLIENT and attempt.parent.span_id == routed.context.span_id
        assert attempt.attributes["rpc.grpc.status_code"] == "OK" and attempt.attributes["tierlm.completion_tokens"] == 2
    # Each tier's own server span continues the same trace under the router's attempt.
    served = by_name["tierlm.v1.Generator/Generate"]
    assert sorted(s.parent.span_id for s in served) == sorted(a.context.span_id for a in attempts)


class _Collector:
    """An OTLP trace collector on 127.0.0.1 that keeps the span names it receives."""

    def __init__(self):
        names = self.names = []

        class Service(trace_service_pb2_grpc.TraceServiceServicer):
            def Export(self, request, context):
                names.extend(s.name for rs in request.resource_spans for ss in rs.scope_spans for s in ss.spans)
                return trace_service_pb2.ExportTraceServiceResponse()

        self.server = grpc.server(futures.ThreadPoolExecutor(2))
        trace_service_pb2_grpc.add_TraceServiceServicer_to_server(Service(), self.server)
        self.port = self.server.add_insecure_port("127.0.0.1:0")
        self.server.start()


def test_a_router_process_exports_its_spans_over_otlp_when_configured(tmp_path, monkeypatch):
    collector = _Collector()
    # The standard OpenTelemetry variables, inherited by the router process.
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", f"http://127.0.0.1:{collector.port}")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_INSECURE", "true")
    try:
        with scripted_tiers("edge", "cloud") as ports:
            policy = write(tmp_path / "policy.yaml", two_tier_policy(ports["edge"], ports["cloud"]))
            with RouterProcess(policy, tmp_path / "ledger.sqlite", "--no-auth") as router:
                with Client(router.address) as client:
                    client.complete("a hard one", max_tokens=4)
            # SIGTERM: the router drained and its exporter flushed on exit.
    finally:
        collector.server.stop(0)
    assert {"tierlm.v1.Router/Complete", "tier edge", "tier cloud"} <= set(collector.names), collector.names
