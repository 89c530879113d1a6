"""The cascade at run time: call the cheapest tier, score its answer, accept or escalate.

Pure asyncio logic over :class:`~tierlm.router.serve.tiers.Tier`s, breakers, a scorer and
the per-tier prompt rewriting, so it runs (and is unit-tested) with in-memory tiers as well as
over gRPC. Each tier goes through two steps: an *attempt* (skip it, call it, or record its
failure) and a *decision* on its answer (:func:`tierlm.router.decision.accepts`, the rule the
offline evaluation and the optimizer use too).

Streaming trade-off (CompleteStream): a tier that may still be escalated from is called
unary, because its answer must be scored before the client sees any of it; only the last
tier the cascade can reach streams token by token. Easy queries therefore arrive as one
chunk from a cheap tier, hard ones stream from the expensive tier. If that last tier fails
before its first chunk, the best earlier answer (or the next tier) is used; once chunks
have been sent the client gets UNAVAILABLE, since text cannot be unsent.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field

import grpc

from tierlm.config import Policy, TierConfig
from tierlm.router.decision import accepts
from tierlm.router.prompting import request_query
from tierlm.router.serve.breaker import CircuitBreaker
from tierlm.router.serve.query import RequestQuery
from tierlm.router.serve.scoring import AnswerScorer
from tierlm.router.serve.tiers import Tier, TierFailure
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

Rewrite = Callable[[str, generator_pb2.GenerateRequest, RequestQuery], generator_pb2.GenerateRequest]


class CascadeError(Exception):
    """The request cannot be answered; `code` is the status the client gets."""

    def __init__(self, code: grpc.StatusCode, message: str, trace: router_pb2.RoutingTrace):
        self.code = code
        self.trace = trace
        super().__init__(message)


def prompt_token_bound(request: generator_pb2.GenerateRequest) -> int:
    """An upper bound on prompt tokens without a tokenizer: BPE tokens hold at least one byte,
    plus room for the special tokens a chat template or BOS adds."""
    if request.WhichOneof("input") == "messages":
        return sum(len(m.content.encode()) + 16 for m in request.messages.messages) + 16
    return len(request.prompt.encode()) + 16


def prompt_token_estimate(request: generator_pb2.GenerateRequest) -> int:
    """Prompt tokens a tier processed when its call was cut before it reported usage: four bytes
    a token, the usual rate of English text under BPE (the bound above would over-bill 4x)."""
    return math.ceil(prompt_token_bound(request) / 4)


def worst_case_cost(tier: TierConfig, request: generator_pb2.GenerateRequest) -> float:
    """The most calling ``tier`` with ``request`` (what the tier is sent) may cost."""
    return tier.cost.cost(prompt_token_bound(request), max(request.max_tokens, 0))


@dataclass
class CascadePlan:
    """What the cascade will try for one request, before calling anything."""

    tiers: list[TierConfig]
    thresholds: dict[str, float]
    budget_per_query: float | None


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
class RoutedRequest:
    """One request on its way through the cascade.

    Built by :meth:`CascadeRunner.prepare` before anything is called: what each tier of the plan
    will be sent (so budgets reserve what those requests may cost) and the query, embedded at
    most once. The trace fills in as tiers are tried; the caller keeps it, so a request that is
    cancelled or times out is still billed and ledgered for the tiers it called.
    """

    request: generator_pb2.GenerateRequest
    query: RequestQuery
    tier_requests: dict[str, generator_pb2.GenerateRequest]
    trace: router_pb2.RoutingTrace = field(default_factory=router_pb2.RoutingTrace)
    # The best answer that was scored below its threshold, kept in case every later tier fails.
    fallback: tuple[generator_pb2.GenerateResponse, router_pb2.TierAttempt] | None = None

    def worst_case_cost(self, plan_: CascadePlan) -> float:
        """What the request may cost at most: every tier of the plan called, with its own request."""
        return sum(worst_case_cost(tier, self.tier_requests[tier.name]) for tier in plan_.tiers)

    def add(self, tier: str, outcome: int, reason: str, cost: float = 0.0, latency_ms: float = 0.0) -> router_pb2.TierAttempt:
        attempt = self.trace.attempts.add(tier=tier, outcome=outcome, reason=reason, cost=cost, latency_ms=latency_ms)
        self.trace.total_cost += cost
        return attempt


@dataclass(frozen=True)
class _Call:
    """A tier's answer and what calling it cost."""

    answer: generator_pb2.GenerateResponse
    cost: float
    latency_ms: float


class CascadeRunner:
    """Runs one request through a plan. Holds no per-request state between calls.

    Args:
        tiers: each tier of the policy by name.
        breakers: each tier's circuit breaker by name.
        scorer: judges answers of tiers that may still be escalated from.
        on_tier_call: ``(tier, seconds, ok)`` after every call, for metrics.
        rewrite: the request a tier is sent (per-tier prompt adaptation); default: unchanged.
        query_of: the request's query (its text, and how to embed it).
    """

    def __init__(
        self,
        tiers: Mapping[str, Tier],
        breakers: Mapping[str, CircuitBreaker],
        scorer: AnswerScorer,
        on_tier_call: Callable[[str, float, bool], None] | None = None,
        rewrite: Rewrite | None = None,
        query_of: Callable[[generator_pb2.GenerateRequest], RequestQuery] = lambda r: RequestQuery(request_query(r)),
    ):
        self.tiers = tiers
        self.breakers = breakers
        self.scorer = scorer
        self._rewrite = rewrite or (lambda tier, request, query: request)
        self._query_of = query_of
        self._on_tier_call = on_tier_call or (lambda tier, seconds, ok: None)

    async def prepare(self, request: generator_pb2.GenerateRequest, plan_: CascadePlan) -> RoutedRequest:
        """What each tier of the plan will be sent, before anything is called. The query is
        embedded here (off the event loop, batched with other requests'), once for retrieval and
        the scorer alike."""
        base = generator_pb2.GenerateRequest()
        base.CopyFrom(request)
        base.return_logprobs = True  # the scorer needs them; stripped again in _finish
        query = self._query_of(request)
        await query.embedded()
        tier_requests = {tier.name: self._rewrite(tier.name, base, query) for tier in plan_.tiers}
        return RoutedRequest(request, query, tier_requests)

    async def complete(
        self, routed: RoutedRequest, plan_: CascadePlan, deadline: float | None
    ) -> generator_pb2.GenerateResponse:
        """Unary routing: the accepted answer (``routed.trace`` holds every tier tried)."""
        async for answer in self._run(routed, plan_, deadline, stream_last=False):
            if answer.is_final:
                return answer
        raise AssertionError("the cascade ended without a final answer")  # _run always ends with one or raises

    async def stream(
        self, routed: RoutedRequest, plan_: CascadePlan, deadline: float | None
    ) -> AsyncIterator[generator_pb2.GenerateResponse]:
        """Streaming routing: chunks of the accepted tier, the last one final."""
        async for chunk in self._run(routed, plan_, deadline, stream_last=True):
            yield chunk

    async def _run(
        self, routed: RoutedRequest, plan_: CascadePlan, deadline: float | None, stream_last: bool
    ) -> AsyncIterator[generator_pb2.GenerateResponse]:
        started = time.perf_counter()
        for index, tier in enumerate(plan_.tiers):
            skipped = self._skip_reason(tier, routed, plan_)
            if skipped:
                routed.add(tier.name, Outcome.TIER_OUTCOME_SKIPPED, skipped)
                continue
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                self.breakers[tier.name].release()
                break
            is_last = index == len(plan_.tiers) - 1
            if is_last and stream_last:
                async for chunk in self._stream_last(tier, routed, remaining, started):
                    yield chunk
                if routed.trace.accepted_tier:
                    return
                continue
            call = await self._attempt(tier, routed, remaining)
            if call is None:
                continue
            if await self._decide(tier, call, routed, plan_, is_last):
                yield self._finish(call.answer, routed, tier.name, started)
                return
        if routed.fallback is not None:
            answer, attempt = routed.fallback
            attempt.outcome = Outcome.TIER_OUTCOME_ACCEPTED
            attempt.reason += "; accepted because no later tier answered"
            yield self._finish(answer, routed, attempt.tier, started)
            return
        reasons = "; ".join(f"{a.tier}: {a.reason}" for a in routed.trace.attempts) or "no tier in the plan"
        code = grpc.StatusCode.DEADLINE_EXCEEDED if deadline is not None and time.monotonic() >= deadline else grpc.StatusCode.UNAVAILABLE
        raise CascadeError(code, f"no tier could answer ({reasons})", routed.trace)

    def _skip_reason(self, tier: TierConfig, routed: RoutedRequest, plan_: CascadePlan) -> str | None:
        """Why the tier is not called at all (budget, open breaker), or None to call it.
        A None from a breaker in the half-open state has claimed its single probe: every
        outcome of the call then records a verdict or releases it."""
        if plan_.budget_per_query is not None:
            would_spend = routed.trace.total_cost + worst_case_cost(tier, routed.tier_requests[tier.name])
            if would_spend > plan_.budget_per_query:
                return f"may cost {would_spend:.6g} in all, over budget_per_query {plan_.budget_per_query:g}"
        breaker = self.breakers[tier.name]
        if not breaker.allow():
            return f"circuit breaker {breaker.state.value}"
        return None

    async def _attempt(self, tier: TierConfig, routed: RoutedRequest, remaining: float | None) -> _Call | None:
        """Call the tier unary; None after a retryable failure (recorded), which moves on to the
        next tier. A failure that is the request's fault ends the cascade with its code."""
        request = routed.tier_requests[tier.name]
        started = time.perf_counter()
        try:
            answer = await self.tiers[tier.name].generate(request, remaining)
        except TierFailure as failure:
            self._failed(routed, tier, failure, started, remaining)
            if failure.code not in RETRYABLE:
                raise CascadeError(failure.code, f"tier {tier.name!r}: {failure.details}", routed.trace) from None
            return None
        except asyncio.CancelledError:
            self._cut(routed, tier, started, completion_tokens=0)
            raise
        latency_ms = (time.perf_counter() - started) * 1e3
        self.breakers[tier.name].record_success()
        self._on_tier_call(tier.name, latency_ms / 1e3, True)
        return _Call(answer, tier.cost.cost(answer.usage.prompt_tokens, answer.usage.completion_tokens), latency_ms)

    async def _decide(self, tier: TierConfig, call: _Call, routed: RoutedRequest, plan_: CascadePlan, is_last: bool) -> bool:
        """Whether the cascade stops at this answer: the last stage always does; an earlier one
        when the scorer's P(correct) reaches the stage's threshold. Records the attempt."""
        if is_last:
            routed.add(tier.name, Outcome.TIER_OUTCOME_ACCEPTED, "last stage", call.cost, call.latency_ms)
            return True
        threshold = plan_.thresholds.get(tier.name, 0.0)
        score = float(await self.scorer.score(routed.query, call.answer, tier.name))
        accepted = bool(accepts(score, threshold))
        outcome, relation = (Outcome.TIER_OUTCOME_ACCEPTED, ">=") if accepted else (Outcome.TIER_OUTCOME_LOW_SCORE, "<")
        attempt = routed.add(tier.name, outcome, f"score {score:.3f} {relation} threshold {threshold:.3f}", call.cost, call.latency_ms)
        attempt.score, attempt.has_score, attempt.threshold = score, True, threshold
        if not accepted and (routed.fallback is None or score > routed.fallback[1].score):
            routed.fallback = (call.answer, attempt)
        return accepted

    async def _stream_last(
        self, tier: TierConfig, routed: RoutedRequest, remaining: float | None, started: float
    ) -> AsyncIterator[generator_pb2.GenerateResponse]:
        """Stream the last reachable tier to the client; on a failure before the first chunk,
        return without an accepted tier so the cascade falls back."""
        call_started = time.perf_counter()
        generated = 0  # tokens streamed so far (each chunk carries its tokens' log-probs)
        try:
            async for chunk in self.tiers[tier.name].stream(routed.tier_requests[tier.name], remaining):
                if chunk.is_final:
                    cost = tier.cost.cost(chunk.usage.prompt_tokens, chunk.usage.completion_tokens)
                    latency = (time.perf_counter() - call_started) * 1e3
                    routed.add(tier.name, Outcome.TIER_OUTCOME_ACCEPTED, "last stage", cost, latency)
                    self.breakers[tier.name].record_success()
                    self._on_tier_call(tier.name, latency / 1e3, True)
                    final = self._finish(chunk, routed, tier.name, started)
                    break
                generated += max(len(chunk.logprobs), 1)
                if not routed.request.return_logprobs:
                    del chunk.logprobs[:]
                yield chunk
        except TierFailure as failure:
            self._failed(routed, tier, failure, call_started, remaining, completion_tokens=generated)
            if generated:
                raise CascadeError(
                    grpc.StatusCode.UNAVAILABLE,
                    f"tier {tier.name!r} failed mid-stream ({failure}); partial text was already sent",
                    routed.trace,
                ) from None
            if failure.code not in RETRYABLE:
                raise CascadeError(failure.code, f"tier {tier.name!r}: {failure.details}", routed.trace) from None
        except (asyncio.CancelledError, GeneratorExit):
            # The client went away (or its deadline passed) mid-stream: bill what was generated.
            self._cut(routed, tier, call_started, completion_tokens=generated)
            raise
        else:
            if routed.trace.accepted_tier:
                yield final

    def _failed(
        self, routed: RoutedRequest, tier: TierConfig, failure: TierFailure, call_started: float,
        remaining: float | None, completion_tokens: int = 0,
    ) -> None:
        latency = (time.perf_counter() - call_started) * 1e3
        # A failed call is charged its fixed price and what it streamed: the tier did that work.
        cost = tier.cost.per_call + tier.cost.per_output_token * completion_tokens
        routed.add(tier.name, Outcome.TIER_OUTCOME_FAILED, str(failure), cost, latency)
        breaker = self.breakers[tier.name]
        if _tier_at_fault(failure.code, tier, remaining):
            breaker.record_failure()
        else:
            breaker.release()
        self._on_tier_call(tier.name, latency / 1e3, False)

    def _cut(self, routed: RoutedRequest, tier: TierConfig, call_started: float, completion_tokens: int) -> None:
        """Record a call the client's cancellation or deadline cut short, billed for the prompt the
        tier processed (estimated) and the tokens it had generated; no verdict on the tier."""
        latency = (time.perf_counter() - call_started) * 1e3
        cost = tier.cost.cost(prompt_token_estimate(routed.tier_requests[tier.name]), completion_tokens)
        routed.add(tier.name, Outcome.TIER_OUTCOME_FAILED,
                   f"cut by the client after {latency:.0f} ms, {completion_tokens} tokens generated", cost, latency)
        self.breakers[tier.name].release()

    def _finish(
        self, answer: generator_pb2.GenerateResponse, routed: RoutedRequest, tier: str, started: float
    ) -> generator_pb2.GenerateResponse:
        final = generator_pb2.GenerateResponse()
        final.CopyFrom(answer)
        final.is_final = True
        final.tier = tier  # the policy's name for the tier, whatever the server calls itself
        if routed.request.request_id:
            final.request_id = routed.request.request_id
        if not routed.request.return_logprobs:
            del final.logprobs[:]
        trace = routed.trace
        trace.accepted_tier = tier
        tier_ms = sum(a.latency_ms for a in trace.attempts)
        trace.overhead_ms = max(0.0, (time.perf_counter() - started) * 1e3 - tier_ms)
        return final


def _tier_at_fault(code: grpc.StatusCode, tier: TierConfig, remaining: float | None) -> bool:
    """Whether a failure says the tier is unwell (the breaker counts it): it failed or timed out
    on its own, not because the request was bad or the caller's deadline was shorter than the
    tier's timeout."""
    if code not in RETRYABLE:
        return False
    if code is grpc.StatusCode.DEADLINE_EXCEEDED:
        return remaining is None or remaining >= tier.timeout_s
    return True
