"""The cascade at run time: call the cheapest tier, score its answer, accept or escalate.

Pure asyncio logic over TierClients, breakers, budgets and a scorer, so the router
server and the offline tools share one implementation of the decision.

Streaming trade-off (CompleteStream): a tier that may still be escalated from is called
unary, because its answer must be scored before the client sees any of it; only the last
tier the cascade can reach streams token by token. Easy queries therefore arrive as one
chunk from a cheap tier, hard ones stream from the expensive tier. If that last tier fails
before its first chunk, the best earlier answer (or the next tier) is used; once chunks
have been sent the client gets UNAVAILABLE, since text cannot be unsent.
"""

from __future__ import annotations

import math
import time
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from typing import Protocol

import grpc

from tierlm.config import Policy, TierConfig
from tierlm.router.breaker import CircuitBreaker
from tierlm.router.tiers import TierClient, TierFailure
from tierlm.v1 import generator_pb2, router_pb2

Outcome = router_pb2.TierOutcome

# Failures after which the next tier is tried; anything else (INVALID_ARGUMENT, ...) is
# the request's fault and goes straight back to the client.
RETRYABLE = frozenset(
    {
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        grpc.StatusCode.CANCELLED,
        grpc.StatusCode.INTERNAL,
        grpc.StatusCode.UNKNOWN,
        grpc.StatusCode.UNAUTHENTICATED,
    }
)


class AnswerScorer(Protocol):
    """P(answer is correct) for a tier's answer to a query."""

    def score(self, query: str, answer: generator_pb2.GenerateResponse, tier: str) -> float: ...


class ConfidenceScorer:
    """The scorer used when the policy names none: the tier's own confidence.

    With label-choice answers, the softmax probability of the chosen label; otherwise the
    geometric mean of the generated tokens' probabilities.
    """

    def score(self, query: str, answer: generator_pb2.GenerateResponse, tier: str) -> float:
        if answer.choice_logprobs:
            values = [c.logprob for c in answer.choice_logprobs]
            top = max(values)
            return 1.0 / sum(math.exp(v - top) for v in values)
        if answer.logprobs:
            return math.exp(sum(t.logprob for t in answer.logprobs) / len(answer.logprobs))
        return 0.0


class CascadeError(Exception):
    """The request cannot be answered; `code` is the status the client gets."""

    def __init__(self, code: grpc.StatusCode, message: str, trace: router_pb2.RoutingTrace):
        self.code = code
        self.trace = trace
        super().__init__(message)


def query_text(request: generator_pb2.GenerateRequest) -> str:
    if request.WhichOneof("input") == "messages":
        return "\n".join(f"{m.role}: {m.content}" for m in request.messages.messages)
    return request.prompt


def prompt_token_bound(request: generator_pb2.GenerateRequest) -> int:
    """An upper bound on prompt tokens without a tokenizer: BPE tokens hold at least one byte,
    plus room for the special tokens a chat template or BOS adds."""
    if request.WhichOneof("input") == "messages":
        return sum(len(m.content.encode()) + 16 for m in request.messages.messages) + 16
    return len(request.prompt.encode()) + 16


def worst_case_cost(tier: TierConfig, request: generator_pb2.GenerateRequest) -> float:
    return tier.cost.cost(prompt_token_bound(request), max(request.max_tokens, 0))


@dataclass
class CascadePlan:
    """What the cascade will try for one request, before calling anything."""

    tiers: list[TierConfig]
    thresholds: dict[str, float]
    budget_per_query: float | None

    def worst_case_cost(self, request: generator_pb2.GenerateRequest) -> float:
        return sum(worst_case_cost(tier, request) for tier in self.tiers)


def plan(policy: Policy, routing: router_pb2.RoutingOptions, tenant_budget_per_query: float | None) -> CascadePlan:
    """Apply the request's routing options to the policy; ValueError names a bad option."""
    names = list(policy.cascade.order)
    known = {t.name for t in policy.tiers}
    if routing.force_tier:
        if routing.force_tier not in known:
            raise ValueError(f"force_tier {routing.force_tier!r} is not a tier; tiers are {sorted(known)}")
        names = [routing.force_tier]
    elif routing.max_tier:
        if routing.max_tier not in names:
            raise ValueError(f"max_tier {routing.max_tier!r} is not in the cascade {names}")
        names = names[: names.index(routing.max_tier) + 1]
    limits = [
        b
        for b in (
            policy.cascade.budget_per_query,
            tenant_budget_per_query,
            routing.budget_per_query if routing.HasField("budget_per_query") else None,
        )
        if b is not None
    ]
    return CascadePlan(
        tiers=[policy.tier(n) for n in names],
        thresholds=dict(policy.cascade.thresholds),
        budget_per_query=min(limits) if limits else None,
    )


@dataclass
class _Attempts:
    trace: router_pb2.RoutingTrace = field(default_factory=router_pb2.RoutingTrace)
    scoring_s: float = 0.0
    # The best answer that was scored below its threshold, kept in case every later tier fails.
    fallback: tuple[generator_pb2.GenerateResponse, router_pb2.TierAttempt] | None = None

    def add(self, tier: str, outcome: int, reason: str, cost: float = 0.0, latency_ms: float = 0.0) -> router_pb2.TierAttempt:
        attempt = self.trace.attempts.add(tier=tier, outcome=outcome, reason=reason, cost=cost, latency_ms=latency_ms)
        self.trace.total_cost += cost
        return attempt


class CascadeRunner:
    """Runs one request through a plan. Holds no per-request state between calls."""

    def __init__(
        self,
        clients: Mapping[str, TierClient],
        breakers: Mapping[str, CircuitBreaker],
        scorer: AnswerScorer,
        on_tier_call: Callable[[str, float, bool], None] | None = None,
        rewrite: Callable[[str, generator_pb2.GenerateRequest], generator_pb2.GenerateRequest] | None = None,
        query_of: Callable[[generator_pb2.GenerateRequest], str] = query_text,
    ):
        self.clients = clients
        self.breakers = breakers
        self.scorer = scorer
        # Per-tier prompt adaptation (router/serving_prompts.py): the request a tier is sent,
        # and the query text the scorer judges the answer against.
        self._rewrite = rewrite or (lambda tier, request: request)
        self._query_of = query_of
        # (tier, seconds, ok) for metrics; kept out of this module's concerns.
        self._on_tier_call = on_tier_call or (lambda tier, seconds, ok: None)

    async def complete(
        self, request: generator_pb2.GenerateRequest, plan_: CascadePlan, deadline: float | None
    ) -> tuple[generator_pb2.GenerateResponse, router_pb2.RoutingTrace]:
        """Unary routing: the accepted answer and the trace of every tier tried."""
        async for answer, trace in self._run(request, plan_, deadline, stream_last=False):
            if answer.is_final:
                return answer, trace
        raise AssertionError("the cascade ended without a final answer")  # _run always ends with one or raises

    async def stream(
        self, request: generator_pb2.GenerateRequest, plan_: CascadePlan, deadline: float | None
    ) -> AsyncIterator[tuple[generator_pb2.GenerateResponse, router_pb2.RoutingTrace]]:
        """Streaming routing: chunks of the accepted tier, the last one final and carrying the trace."""
        async for item in self._run(request, plan_, deadline, stream_last=True):
            yield item

    async def _run(
        self, request: generator_pb2.GenerateRequest, plan_: CascadePlan, deadline: float | None, stream_last: bool
    ) -> AsyncIterator[tuple[generator_pb2.GenerateResponse, router_pb2.RoutingTrace]]:
        started = time.perf_counter()
        attempts = _Attempts()
        query = self._query_of(request)
        base_request = generator_pb2.GenerateRequest()
        base_request.CopyFrom(request)
        base_request.return_logprobs = True  # the scorer needs them; stripped again below
        for index, tier in enumerate(plan_.tiers):
            name = tier.name
            breaker = self.breakers[name]
            later = plan_.tiers[index + 1 :]
            if plan_.budget_per_query is not None:
                would_spend = attempts.trace.total_cost + worst_case_cost(tier, request)
                if would_spend > plan_.budget_per_query:
                    attempts.add(name, Outcome.TIER_OUTCOME_SKIPPED,
                                 f"may cost {would_spend:.6g} in all, over budget_per_query {plan_.budget_per_query:g}")
                    continue
            if not breaker.allow():
                attempts.add(name, Outcome.TIER_OUTCOME_SKIPPED, f"circuit breaker {breaker.state.value}")
                continue
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                break
            is_last = not later
            tier_request = self._rewrite(name, base_request)
            call_started = time.perf_counter()
            if is_last and stream_last:
                sent_any = False
                try:
                    async for chunk in self.clients[name].stream(tier_request, remaining):
                        if chunk.is_final:
                            cost = tier.cost.cost(chunk.usage.prompt_tokens, chunk.usage.completion_tokens)
                            latency = (time.perf_counter() - call_started) * 1e3
                            attempts.add(name, Outcome.TIER_OUTCOME_ACCEPTED, "last stage", cost, latency)
                            breaker.record_success()
                            self._on_tier_call(name, latency / 1e3, True)
                            yield self._finish(chunk, request, attempts, name, started)
                            return
                        sent_any = True
                        if not request.return_logprobs:
                            del chunk.logprobs[:]
                        yield chunk, attempts.trace
                except TierFailure as failure:
                    self._failed(attempts, tier, failure, call_started, breaker)
                    if sent_any:
                        raise CascadeError(
                            grpc.StatusCode.UNAVAILABLE,
                            f"tier {name!r} failed mid-stream ({failure}); partial text was already sent",
                            attempts.trace,
                        ) from None
                    if failure.code not in RETRYABLE:
                        raise CascadeError(failure.code, f"tier {name!r}: {failure.details}", attempts.trace) from None
                continue
            try:
                answer = await self.clients[name].generate(tier_request, remaining)
            except TierFailure as failure:
                self._failed(attempts, tier, failure, call_started, breaker)
                if failure.code not in RETRYABLE:
                    raise CascadeError(failure.code, f"tier {name!r}: {failure.details}", attempts.trace) from None
                continue
            breaker.record_success()
            latency = (time.perf_counter() - call_started) * 1e3
            self._on_tier_call(name, latency / 1e3, True)
            cost = tier.cost.cost(answer.usage.prompt_tokens, answer.usage.completion_tokens)
            if is_last:
                attempts.add(name, Outcome.TIER_OUTCOME_ACCEPTED, "last stage", cost, latency)
                yield self._finish(answer, request, attempts, name, started)
                return
            threshold = plan_.thresholds.get(name, 0.0)
            score_started = time.perf_counter()
            score = float(self.scorer.score(query, answer, name))
            attempts.scoring_s += time.perf_counter() - score_started
            if score >= threshold:
                attempt = attempts.add(name, Outcome.TIER_OUTCOME_ACCEPTED, f"score {score:.3f} >= threshold {threshold:.3f}", cost, latency)
                attempt.score, attempt.has_score, attempt.threshold = score, True, threshold
                yield self._finish(answer, request, attempts, name, started)
                return
            attempt = attempts.add(name, Outcome.TIER_OUTCOME_LOW_SCORE, f"score {score:.3f} < threshold {threshold:.3f}", cost, latency)
            attempt.score, attempt.has_score, attempt.threshold = score, True, threshold
            if attempts.fallback is None or score > attempts.fallback[1].score:
                attempts.fallback = (answer, attempt)
        if attempts.fallback is not None:
            answer, attempt = attempts.fallback
            attempt.outcome = Outcome.TIER_OUTCOME_ACCEPTED
            attempt.reason += "; accepted because no later tier answered"
            yield self._finish(answer, request, attempts, attempt.tier, started)
            return
        reasons = "; ".join(f"{a.tier}: {a.reason}" for a in attempts.trace.attempts) or "no tier in the plan"
        code = grpc.StatusCode.DEADLINE_EXCEEDED if deadline is not None and time.monotonic() >= deadline else grpc.StatusCode.UNAVAILABLE
        raise CascadeError(code, f"no tier could answer ({reasons})", attempts.trace)

    def _failed(
        self, attempts: _Attempts, tier: TierConfig, failure: TierFailure, call_started: float, breaker: CircuitBreaker
    ) -> None:
        latency = (time.perf_counter() - call_started) * 1e3
        # A failed call is charged its fixed per-call price: the tier may have done the work.
        attempts.add(tier.name, Outcome.TIER_OUTCOME_FAILED, str(failure), tier.cost.per_call, latency)
        if failure.code in RETRYABLE:
            breaker.record_failure()
        self._on_tier_call(tier.name, latency / 1e3, False)

    def _finish(
        self,
        answer: generator_pb2.GenerateResponse,
        request: generator_pb2.GenerateRequest,
        attempts: _Attempts,
        tier: str,
        started: float,
    ) -> tuple[generator_pb2.GenerateResponse, router_pb2.RoutingTrace]:
        final = generator_pb2.GenerateResponse()
        final.CopyFrom(answer)
        final.is_final = True
        final.tier = tier  # the policy's name for the tier, whatever the server calls itself
        if request.request_id:
            final.request_id = request.request_id
        if not request.return_logprobs:
            del final.logprobs[:]
        trace = attempts.trace
        trace.accepted_tier = tier
        tier_ms = sum(a.latency_ms for a in trace.attempts)
        trace.overhead_ms = max(0.0, (time.perf_counter() - started) * 1e3 - tier_ms)
        return final, trace
