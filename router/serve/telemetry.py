"""Prometheus metrics of the router service."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

REQUESTS = Counter("tierlm_router_requests_total", "Routed requests by final status", ["code"])
ESCALATIONS = Counter("tierlm_router_escalations_total", "Escalations from one tier to the next", ["from_tier", "to_tier"])
ANSWERS = Counter("tierlm_router_answers_total", "Answers returned, by the tier that produced them", ["tier"])
SCORER_SECONDS = Histogram(
    "tierlm_router_scorer_seconds", "Time spent scoring one request's answers",
    buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1),
)
TIER_SECONDS = Histogram(
    "tierlm_router_tier_seconds", "Latency of one tier call as the router sees it", ["tier", "ok"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
TENANT_COST = Counter("tierlm_router_tenant_cost_total", "Cost booked per tenant", ["tenant"])
BREAKER_OPEN = Gauge("tierlm_router_breaker_open", "1 while a tier's circuit breaker is open or half-open", ["tier"])
CACHE_HITS = Counter("tierlm_router_cache_hits_total", "Requests answered from the response cache")
POLICY_RELOADS = Counter("tierlm_router_policy_reloads_total", "Policy reload attempts", ["result"])
LEDGER_WRITES_LOST = Counter(
    "tierlm_router_ledger_writes_lost_total", "Requests that ended without an answer and could not be ledgered (store down)"
)
AUTH_FAILURES = Counter("tierlm_router_auth_failures_total", "Calls refused for a missing or unknown API key")
EXACT_RESCORES = Counter(
    "tierlm_router_exact_rescores_total",
    "Scores within the margin of their threshold, computed again from float32 embeddings (the router embeds in int8)",
)
