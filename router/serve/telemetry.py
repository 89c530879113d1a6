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
# In the policy's currency, USD unless it says otherwise. Labelled by tenant: scrape it from the
# metrics port only (the chart keeps that port off the clients' Service).
TENANT_COST = Counter("tierlm_router_tenant_cost_usd_total", "Cost booked per tenant, in the policy's currency (USD)", ["tenant"])
PROMPT_TOKENS = Counter("tierlm_router_prompt_tokens_total", "Prompt tokens of answered requests, by tenant and answering tier",
                        ["tenant", "tier"])
COMPLETION_TOKENS = Counter("tierlm_router_completion_tokens_total",
                            "Completion tokens of answered requests, by tenant and answering tier", ["tenant", "tier"])
BREAKER_OPEN = Gauge("tierlm_router_breaker_open", "1 while a tier's circuit breaker is open or half-open", ["tier"])
CACHE_HITS = Counter("tierlm_router_cache_hits_total", "Requests answered from the response cache")
POLICY_RELOADS = Counter("tierlm_router_policy_reloads_total", "Policy reload attempts", ["result"])
LEDGER_WRITES_LOST = Counter(
    "tierlm_router_ledger_writes_lost_total", "Requests that ended without an answer and could not be ledgered (store down)"
)
AUTH_FAILURES = Counter("tierlm_router_auth_failures_total", "Calls refused for a missing or unknown API key")

# Learning from live traffic (router/serve/learning.py): over each tier's last labelled answers
# under the live policy; see docs/learning.md.
FEEDBACK = Counter("tierlm_router_feedback_total", "Feedback calls by result", ["result"])
EXPLORATIONS = Counter("tierlm_router_explorations_total", "Exploration attempts by result", ["result"])
EXPLORATION_COST = Counter("tierlm_router_exploration_cost_total", "What exploration calls cost")
LIVE_LABELS = Gauge("tierlm_router_live_labels", "Labelled answers in the tier's calibration window", ["tier"])
LIVE_ACCURACY = Gauge("tierlm_router_live_accuracy", "Share of the tier's labelled answers that were right", ["tier"])
LIVE_BRIER = Gauge("tierlm_router_live_brier", "Brier score of the scorer on the tier's labelled answers", ["tier"])
LIVE_ECE = Gauge("tierlm_router_live_ece", "Expected calibration error of the scorer on the tier's labelled answers", ["tier"])
LIVE_ACCEPT_RATE = Gauge("tierlm_router_live_accept_rate", "Share of labelled requests where the tier was called and accepted", ["tier"])
LIVE_ESCALATION_RATE = Gauge(
    "tierlm_router_live_escalation_rate", "Share of labelled requests where the tier was called and escalated", ["tier"]
)
LIVE_SERVED_ACCURACY = Gauge("tierlm_router_live_served_accuracy", "Share of labelled answers callers got that were right")
CALIBRATION_ALARM = Gauge("tierlm_router_calibration_alarm", "1 while the policy's calibration alarm fires for the tier", ["tier"])

EXACT_RESCORES = Counter(
    "tierlm_router_exact_rescores_total",
    "Scores within the margin of their threshold, computed again from float32 embeddings (the router embeds in int8)",
)
