"""The cascade runtime on in-memory tiers: attempts, decisions, budgets, breakers, streaming.

No server and no network: each tier is a script of answers or failures, so every branch of
the runner is reached on purpose.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import grpc
import numpy as np
import pytest

from tierlm.config import parse_policy
from tierlm.router.serve.breaker import CircuitBreaker
from tierlm.router.serve.cascade import CascadeError, CascadeRunner, plan
from tierlm.router.serve.query import RequestQuery
from tierlm.router.serve.tiers import TierFailure
from tierlm.v1 import generator_pb2, router_pb2

POLICY = """
tiers:
  - {name: small, address: "127.0.0.1:1", cost: {per_call: 0.001}}
  - {name: large, address: "127.0.0.1:2", cost: {per_call: 0.01, per_output_token: 0.001}}
cascade: {order: [small, large], thresholds: {small: 0.6}}
"""

Outcome = router_pb2.TierOutcome


def answer(text: str, confidence: float, tokens: int = 1) -> generator_pb2.GenerateResponse:
    return generator_pb2.GenerateResponse(
        text=text, is_final=True, usage=generator_pb2.Usage(prompt_tokens=5, completion_tokens=tokens),
        choice_logprobs=[generator_pb2.ChoiceLogprob(choice=text, logprob=float(np.log(confidence)))],
    )


class ScriptedTier:
    """A tier that answers (or fails) from a script, and records what it was sent."""

    def __init__(self, *script: generator_pb2.GenerateResponse | TierFailure, chunks: int = 0):
        self.script = list(script)
        self.chunks = chunks
        self.requests: list[generator_pb2.GenerateRequest] = []

    def _next(self, request: generator_pb2.GenerateRequest) -> generator_pb2.GenerateResponse:
        self.requests.append(request)
        item = self.script.pop(0)
        if isinstance(item, TierFailure):
            raise item
        return item

    async def generate(self, request, remaining_s):
        return self._next(request)

    async def stream(self, request, remaining_s) -> AsyncIterator[generator_pb2.GenerateResponse]:
        self.requests.append(request)
        item = self.script.pop(0)
        for i in range(self.chunks):
            yield generator_pb2.GenerateResponse(text=f"chunk{i} ")
        if isinstance(item, TierFailure):
            raise item
        yield item


class TopChoice:
    """Scores an answer by its own label probability (what the confidence scorer does)."""

    def __init__(self):
        self.calls: list[tuple[str, str]] = []

    async def score(self, query: RequestQuery, answer, tier: str) -> float:
        self.calls.append((query.text, tier))
        # Rounded: log-probs travel as float32, and a test's 0.6 must come back as 0.6.
        return round(float(np.exp(answer.choice_logprobs[0].logprob)), 6)


def failure(code: grpc.StatusCode) -> TierFailure:
    return TierFailure("t", code, "scripted")


def runner(small: ScriptedTier, large: ScriptedTier, breakers=None, **kwargs) -> CascadeRunner:
    breakers = breakers or {"small": CircuitBreaker(3, 10.0), "large": CircuitBreaker(3, 10.0)}
    return CascadeRunner({"small": small, "large": large}, breakers, TopChoice(), **kwargs)


def route(cascade: CascadeRunner, routing: router_pb2.RoutingOptions | None = None, stream: bool = False):
    policy = parse_policy(POLICY)
    request = generator_pb2.GenerateRequest(prompt="gold rises", max_tokens=4, request_id="r1")
    cascade_plan = plan(policy, routing or router_pb2.RoutingOptions(), None)

    async def go():
        routed = await cascade.prepare(request, cascade_plan)
        if not stream:
            return [(await cascade.complete(routed, cascade_plan, None), routed.trace)]
        return [(chunk, routed.trace) async for chunk in cascade.stream(routed, cascade_plan, None)]

    return asyncio.run(go())


def outcomes(trace: router_pb2.RoutingTrace) -> list[tuple[str, int]]:
    return [(a.tier, a.outcome) for a in trace.attempts]


def test_unpriced_a_tier_request_is_rendered_only_when_the_tier_is_called() -> None:
    rendered: list[str] = []

    def rewrite(tier, request, query):
        rendered.append(tier)
        return request

    policy = parse_policy(POLICY)
    cascade_plan = plan(policy, router_pb2.RoutingOptions(), None)
    request = generator_pb2.GenerateRequest(prompt="gold rises", max_tokens=4)

    async def go(priced: bool) -> float | None:
        cascade = runner(ScriptedTier(answer("up", 0.9)), ScriptedTier(answer("down", 0.99)), rewrite=rewrite)
        routed = await cascade.prepare(request, cascade_plan, priced=priced)
        await cascade.complete(routed, cascade_plan, None)
        return routed.worst_case_cost(cascade_plan) if priced else None

    assert asyncio.run(go(priced=False)) is None and rendered == ["small"]  # the small tier answered
    rendered.clear()
    # Priced (a budget holds the worst case up front): every tier of the plan, before any call.
    assert asyncio.run(go(priced=True)) == pytest.approx(0.001 + 0.01 + 4 * 0.001) and rendered == ["small", "large"]


def test_a_confident_cheap_answer_is_accepted_and_the_large_tier_never_called() -> None:
    small, large = ScriptedTier(answer("up", 0.9)), ScriptedTier(answer("down", 0.99))
    [(final, trace)] = route(runner(small, large))
    assert final.text == "up" and final.tier == "small" and final.is_final
    assert outcomes(trace) == [("small", Outcome.TIER_OUTCOME_ACCEPTED)] and not large.requests
    assert trace.total_cost == pytest.approx(0.001) and trace.attempts[0].score == pytest.approx(0.9)


def test_a_low_score_escalates_and_both_calls_are_paid() -> None:
    small, large = ScriptedTier(answer("up", 0.4)), ScriptedTier(answer("down", 0.99, tokens=3))
    [(final, trace)] = route(runner(small, large))
    assert final.tier == "large"
    assert outcomes(trace) == [("small", Outcome.TIER_OUTCOME_LOW_SCORE), ("large", Outcome.TIER_OUTCOME_ACCEPTED)]
    assert trace.total_cost == pytest.approx(0.001 + 0.01 + 0.003)


def test_a_score_equal_to_the_threshold_is_accepted() -> None:
    """The rule the optimizer fits thresholds under (router/decision.py)."""
    small, large = ScriptedTier(answer("up", 0.6)), ScriptedTier(answer("down", 0.99))
    [(final, _)] = route(runner(small, large))
    assert final.tier == "small"


def test_a_retryable_failure_moves_on_and_a_bad_request_stops() -> None:
    small, large = ScriptedTier(failure(grpc.StatusCode.UNAVAILABLE)), ScriptedTier(answer("down", 0.99))
    [(final, trace)] = route(runner(small, large))
    assert final.tier == "large" and outcomes(trace)[0] == ("small", Outcome.TIER_OUTCOME_FAILED)
    assert trace.total_cost == pytest.approx(0.001 + 0.01 + 0.001)  # a failed call is charged its per-call price
    with pytest.raises(CascadeError) as error:
        route(runner(ScriptedTier(failure(grpc.StatusCode.INVALID_ARGUMENT)), ScriptedTier(answer("x", 1.0))))
    assert error.value.code == grpc.StatusCode.INVALID_ARGUMENT


def test_the_best_low_score_answer_is_kept_when_every_later_tier_fails() -> None:
    small, large = ScriptedTier(answer("up", 0.4)), ScriptedTier(failure(grpc.StatusCode.DEADLINE_EXCEEDED))
    [(final, trace)] = route(runner(small, large))
    assert final.text == "up" and trace.accepted_tier == "small"
    assert "no later tier answered" in trace.attempts[0].reason


def test_no_answer_at_all_is_unavailable_with_every_reason() -> None:
    small, large = ScriptedTier(failure(grpc.StatusCode.UNAVAILABLE)), ScriptedTier(failure(grpc.StatusCode.UNAVAILABLE))
    with pytest.raises(CascadeError) as error:
        route(runner(small, large))
    assert error.value.code == grpc.StatusCode.UNAVAILABLE and "small: UNAVAILABLE" in str(error.value)


def test_a_tier_over_the_per_query_budget_is_skipped() -> None:
    small, large = ScriptedTier(answer("up", 0.4)), ScriptedTier(answer("down", 0.99))
    routing = router_pb2.RoutingOptions(budget_per_query=0.005)  # large may cost 0.01 + 4 tokens
    [(final, trace)] = route(runner(small, large), routing)
    assert final.tier == "small" and not large.requests
    assert outcomes(trace) == [("small", Outcome.TIER_OUTCOME_ACCEPTED), ("large", Outcome.TIER_OUTCOME_SKIPPED)]


def test_an_open_breaker_skips_its_tier() -> None:
    breakers = {"small": CircuitBreaker(1, 60.0), "large": CircuitBreaker(3, 10.0)}
    breakers["small"].record_failure()
    small, large = ScriptedTier(answer("up", 0.9)), ScriptedTier(answer("down", 0.99))
    [(final, trace)] = route(runner(small, large, breakers))
    assert final.tier == "large" and not small.requests
    assert trace.attempts[0].reason == "circuit breaker open"


def test_force_tier_and_max_tier() -> None:
    small, large = ScriptedTier(answer("up", 0.1)), ScriptedTier(answer("down", 0.99))
    [(final, _)] = route(runner(small, large), router_pb2.RoutingOptions(max_tier="small"))
    assert final.tier == "small"  # the only stage is the last: it always answers
    [(final, _)] = route(runner(ScriptedTier(), ScriptedTier(answer("down", 0.99))), router_pb2.RoutingOptions(force_tier="large"))
    assert final.tier == "large"


def test_only_the_last_tier_streams_and_a_failure_after_chunks_is_unavailable() -> None:
    small, large = ScriptedTier(answer("up", 0.4)), ScriptedTier(answer("done", 0.99), chunks=3)
    items = route(runner(small, large), stream=True)
    texts = [chunk.text for chunk, _ in items]
    assert texts == ["chunk0 ", "chunk1 ", "chunk2 ", "done"] and items[-1][0].is_final
    assert items[-1][1].accepted_tier == "large"
    broken = ScriptedTier(failure(grpc.StatusCode.UNAVAILABLE), chunks=2)
    with pytest.raises(CascadeError, match="mid-stream") as error:
        route(runner(ScriptedTier(answer("up", 0.4)), broken), stream=True)
    assert error.value.code == grpc.StatusCode.UNAVAILABLE


def test_a_stream_that_fails_before_its_first_chunk_falls_back() -> None:
    small, large = ScriptedTier(answer("up", 0.4)), ScriptedTier(failure(grpc.StatusCode.UNAVAILABLE))
    items = route(runner(small, large), stream=True)
    assert [c.text for c, _ in items] == ["up"] and items[-1][1].accepted_tier == "small"


class CountingEmbedder:
    def __init__(self):
        self.calls = 0

    async def embed(self, text):
        self.calls += 1
        return np.ones(4, dtype=np.float32) / 2.0


def test_tiers_get_their_rewritten_request_and_the_query_is_embedded_once() -> None:
    embedder = CountingEmbedder()

    def rewrite(tier, request, query: RequestQuery):
        assert query.embedding() is not None  # retrieval reads the shared embedding, awaited before
        rewritten = generator_pb2.GenerateRequest()
        rewritten.CopyFrom(request)
        rewritten.prompt = f"[{tier}] {query.text}"
        return rewritten

    small, large = ScriptedTier(answer("up", 0.4)), ScriptedTier(answer("down", 0.99))
    cascade = runner(small, large, rewrite=rewrite, query_of=lambda r: RequestQuery(r.prompt, embedder.embed))
    route(cascade)
    assert [r.prompt for r in small.requests + large.requests] == ["[small] gold rises", "[large] gold rises"]
    assert all(r.return_logprobs for r in small.requests)  # the scorer needs them
    assert embedder.calls == 1
