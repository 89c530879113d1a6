"""Prometheus metrics of the edge engine, fed by its observer hooks."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

from tierlm.edge.requests import Completion
from tierlm.edge.stats import EngineObserver

TTFT = Histogram("tierlm_edge_ttft_seconds", "Time from submission to the first token",
                 buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10))
INTER_TOKEN = Histogram("tierlm_edge_inter_token_seconds", "Time between consecutive tokens of one request",
                        buckets=(0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1))
TOKENS = Counter("tierlm_edge_generated_tokens_total", "Generated tokens")
REJECTS = Counter("tierlm_edge_rejected_total", "Requests refused because the queue was full")
FINISHED = Counter("tierlm_edge_finished_total", "Finished requests by finish reason", ["reason"])
REQUEST_SECONDS = Histogram("tierlm_edge_request_seconds", "Submission to completion",
                            buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60))
QUEUE_DEPTH = Gauge("tierlm_edge_queue_depth", "Requests admitted and waiting for a batch slot")
RUNNING = Gauge("tierlm_edge_running_batch", "Requests in the running batch")


class PrometheusObserver(EngineObserver):
    """Called from the decode thread; prometheus-client metrics are thread-safe."""

    def on_reject(self) -> None:
        REJECTS.inc()

    def on_first_token(self, ttft_s: float) -> None:
        TTFT.observe(ttft_s)

    def on_token(self, inter_token_s: float) -> None:
        INTER_TOKEN.observe(inter_token_s)
        TOKENS.inc()

    def on_finish(self, completion: Completion) -> None:
        FINISHED.labels(completion.finish_reason.value).inc()
        REQUEST_SECONDS.observe(completion.latency_s)


def bind_load_gauges(stats_source) -> None:
    """Make queue depth and batch size read the engine's live numbers at scrape time."""
    QUEUE_DEPTH.set_function(lambda: stats_source().waiting)
    RUNNING.set_function(lambda: stats_source().running)
