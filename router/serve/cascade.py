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
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace

import grpc

from tierlm.config import Policy, TierConfig
from tierlm.router.decision import accepts
from tierlm.router.learn.traffic import SeenAnswer
from tierlm.router.prompting import request_query
from tierlm.router.serve.breaker import BreakerState, CircuitBreaker
from tierlm.router.serve.query import RequestQuery, current_query
from tierlm.router.serve.scoring import AnswerScorer
from tierlm.router.serve.speculative import SpeculativePair, failure_stats
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


def seen_answer(tier: str, answer: generator_pb2.GenerateResponse, cost: float, score: float | None) -> SeenAnswer:
    """What learning keeps of one tier's (whole) answer."""
    return SeenAnswer(
        tier, answer.text, cost, tuple(t.logprob for t in answer.logprobs),
        {c.choice.strip(): c.logprob for c in answer.choice_logprobs} or None, score,
    )


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

    Built by :meth:`CascadeRunner.prepare` before anything is called: the query, embedded at
    most once, and, when a budget prices the request up front, what each tier of the plan will be
    sent and may cost (otherwise a tier's request is rendered when it is first called). The trace
    fills in as tiers are tried; the caller keeps it, so a request that is cancelled or times out
    is still billed and ledgered for the tiers it called.
    """

    request: generator_pb2.GenerateRequest
    query: RequestQuery
    tier_requests: dict[str, generator_pb2.GenerateRequest]
    trace: router_pb2.RoutingTrace = field(default_factory=router_pb2.RoutingTrace)
    # The most calling each tier of the plan may cost (a speculative stage: both tiers, and its
    # fallback); filled by a priced prepare.
    stage_costs: dict[str, float] = field(default_factory=dict)
    # The best answer that was scored below its threshold, kept in case every later tier fails.
    fallback: tuple[generator_pb2.GenerateResponse, router_pb2.TierAttempt] | None = None
    # Every answer a tier gave, with its score where it was scored: what learning records
    # (and the answer itself, for scoring the ones the cascade had no need to score).
    seen: dict[str, SeenAnswer] = field(default_factory=dict)
    responses: dict[str, generator_pb2.GenerateResponse] = field(default_factory=dict)

    def saw(self, tier: str, answer: generator_pb2.GenerateResponse, cost: float, score: float | None) -> None:
        self.seen[tier] = seen_answer(tier, answer, cost, score)
        self.responses[tier] = answer

    def worst_case_cost(self, plan_: CascadePlan) -> float:
        """What the request may cost at most: every tier of the plan called, with its own request
        (the request must have been prepared ``priced``)."""
        return sum(self.stage_costs[tier.name] for tier in plan_.tiers)

    def add(self, tier: str, outcome: int, reason: str, cost: float = 0.0, latency_ms: float = 0.0) -> router_pb2.TierAttempt:
        attempt = self.trace.attempts.add(tier=tier, outcome=outcome, reason=reason, cost=cost, latency_ms=latency_ms)
        self.trace.total_cost += cost
        return attempt


@dataclass
class Exploration:
    """What exploring a request got: the explored tiers' answers and what the calls cost."""

    tiers: list[str] = field(default_factory=list)  # called (answered or failed)
    answers: list[SeenAnswer] = field(default_factory=list)
    cost: float = 0.0
    prompt_tokens: int = 0
    completion_tokens: int = 0


@dataclass(frozen=True)
class _Call:
    """A tier's answer and what calling it cost."""

    answer: generator_pb2.GenerateResponse
    cost: float
    latency_ms: float
    # When a speculative stage answered: how (or, after a fallback, which tier answered and why).
    speculative: router_pb2.SpeculativeAttempt | None = None
    fallback_of: TierConfig | None = None


class CascadeRunner:
    """Runs one request through a plan. Holds no per-request state between calls.

    Args:
        tiers: each tier of the policy by name.
        breakers: each tier's circuit breaker by name.
        scorer: judges answers of tiers that may still be escalated from.
        on_tier_call: ``(tier, seconds, ok)`` after every call, for metrics.
        rewrite: the request a tier is sent (per-tier prompt adaptation); default: unchanged.
        query_of: the request's query (its text, and how to embed it).
        speculation: the policy's speculative pair, through which long generations reach its
            verify tier (:mod:`tierlm.router.serve.speculative`).
    """

    def __init__(
        self,
        tiers: Mapping[str, Tier],
        breakers: Mapping[str, CircuitBreaker],
        scorer: AnswerScorer,
        on_tier_call: Callable[[str, float, bool], None] | None = None,
        rewrite: Rewrite | None = None,
        query_of: Callable[[generator_pb2.GenerateRequest], RequestQuery] = lambda r: RequestQuery(request_query(r)),
        speculation: SpeculativePair | None = None,
    ):
        self.tiers = tiers
        self.speculation = speculation
        self.breakers = breakers
        self.scorer = scorer
        self._rewrite = rewrite or (lambda tier, request, query: request)
        self._query_of = query_of
        self._on_tier_call = on_tier_call or (lambda tier, seconds, ok: None)

    async def prepare(self, request: generator_pb2.GenerateRequest, plan_: CascadePlan, priced: bool = True) -> RoutedRequest:
        """The request ready for the cascade, before anything is called. The query is embedded
        here (off the event loop, batched with other requests'), once for retrieval and the scorer
        alike. ``priced``: also render what each tier of the plan will be sent and its worst-case
        cost, for a budget that holds or checks it up front; unpriced, a tier's prompt is rendered
        when the tier is called, so a request the first tier answers renders no other."""
        routed = RoutedRequest(request, self._query_of(request), {})
        await routed.query.embedded()
        current_query.set(routed.query)  # for the tiers the router answers itself (the request's task and its children)
        for tier in plan_.tiers if priced else ():
            tier_request = self.request_for(routed, tier.name)
            routed.stage_costs[tier.name] = worst_case_cost(tier, tier_request)
            pair = self.speculation
            if pair is not None and pair.applies(tier, tier_request):
                fallback = self.request_for(routed, pair.fallback.name)
                speculative = pair.worst_case_cost(prompt_token_bound(tier_request), tier_request.max_tokens)
                routed.stage_costs[tier.name] = speculative + worst_case_cost(pair.fallback, fallback)
        return routed

    def request_for(self, routed: RoutedRequest, tier: str) -> generator_pb2.GenerateRequest:
        """What ``tier`` is sent for ``routed`` (rewritten on first need, also for a tier outside
        the plan that exploration calls)."""
        if tier not in routed.tier_requests:
            base = generator_pb2.GenerateRequest()
            base.CopyFrom(routed.request)
            base.return_logprobs = True  # the scorer needs them; stripped again in _finish
            routed.tier_requests[tier] = self._rewrite(tier, base, routed.query)
        return routed.tier_requests[tier]

    async def score(self, routed: RoutedRequest, tier: str) -> SeenAnswer:
        """A seen answer with the scorer's P(correct), scoring it now if the cascade did not."""
        seen = routed.seen[tier]
        if seen.score is not None:
            return seen
        return replace(seen, score=float(await self.scorer.score(routed.query, routed.responses[tier], tier)))

    async def explore(self, routed: RoutedRequest, tiers: Sequence[TierConfig]) -> Exploration:
        """Call ``tiers`` (ones the cascade did not) for ``routed``, concurrently, after it was
        answered; their answers are scored and marked explored. A tier whose breaker is not
        closed is left alone: exploration never probes an unwell tier."""
        found = Exploration()

        async def call(tier: TierConfig) -> None:
            if self.breakers[tier.name].state is not BreakerState.CLOSED:
                return
            found.tiers.append(tier.name)
            try:
                answer = await self.tiers[tier.name].generate(self.request_for(routed, tier.name), None)
            except TierFailure:
                found.cost += tier.cost.per_call  # a failed call is charged its fixed price, as in the cascade
                return
            cost = tier.cost.cost(answer.usage.prompt_tokens, answer.usage.completion_tokens)
            score = float(await self.scorer.score(routed.query, answer, tier.name))
            found.answers.append(replace(seen_answer(tier.name, answer, cost, score), explored=True))
            found.cost += cost
            found.prompt_tokens += answer.usage.prompt_tokens
            found.completion_tokens += answer.usage.completion_tokens

        await asyncio.gather(*(call(tier) for tier in tiers))
        return found

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
            # A speculative stage is called unary even when last: it may still fall back.
            speculate = self._speculates(tier, routed)
            if is_last and stream_last and not speculate:
                async for chunk in self._stream_last(tier, routed, remaining, started):
                    yield chunk
                if routed.trace.accepted_tier:
                    return
                continue
            call = await (self._speculate(tier, routed, remaining) if speculate else self._attempt(tier, routed, remaining))
            if call is None:
                continue
            answered = call.fallback_of or tier
            if await self._decide(answered, call, routed, plan_, is_last):
                yield self._finish(call.answer, routed, answered.name, started)
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
            would_spend = routed.trace.total_cost + routed.stage_costs.get(tier.name, worst_case_cost(tier, self.request_for(routed, tier.name)))
            if would_spend > plan_.budget_per_query:
                return f"may cost {would_spend:.6g} in all, over budget_per_query {plan_.budget_per_query:g}"
        breaker = self.breakers[tier.name]
        if not breaker.allow():
            return f"circuit breaker {breaker.state.value}"
        return None

    async def _attempt(self, tier: TierConfig, routed: RoutedRequest, remaining: float | None) -> _Call | None:
        """Call the tier unary; None after a retryable failure (recorded), which moves on to the
        next tier. A failure that is the request's fault ends the cascade with its code."""
        request = self.request_for(routed, tier.name)
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
        note = "; answered alone after speculation failed" if call.fallback_of is not None else ""
        if is_last:
            attempt = routed.add(tier.name, Outcome.TIER_OUTCOME_ACCEPTED, "last stage" + note, call.cost, call.latency_ms)
            if call.speculative is not None:
                attempt.speculative.CopyFrom(call.speculative)
            routed.saw(tier.name, call.answer, call.cost, None)
            return True
        threshold = plan_.thresholds.get(tier.name, 0.0)
        score = float(await self.scorer.score(routed.query, call.answer, tier.name))
        accepted = bool(accepts(score, threshold))
        outcome, relation = (Outcome.TIER_OUTCOME_ACCEPTED, ">=") if accepted else (Outcome.TIER_OUTCOME_LOW_SCORE, "<")
        attempt = routed.add(tier.name, outcome, f"score {score:.3f} {relation} threshold {threshold:.3f}{note}", call.cost, call.latency_ms)
        attempt.score, attempt.has_score, attempt.threshold = score, True, threshold
        if call.speculative is not None:
            attempt.speculative.CopyFrom(call.speculative)
        routed.saw(tier.name, call.answer, call.cost, score)
        if not accepted and (routed.fallback is None or score > routed.fallback[1].score):
            routed.fallback = (call.answer, attempt)
        return accepted

    def _speculates(self, tier: TierConfig, routed: RoutedRequest) -> bool:
        """Whether this stage goes through the speculative pair: the request qualifies and both
        tiers are well (a stage whose breaker is probing calls its tier directly: that is the probe)."""
        pair = self.speculation
        return (
            pair is not None
            and pair.applies(tier, self.request_for(routed, tier.name))
            and self.breakers[pair.draft.name].state is BreakerState.CLOSED
            and self.breakers[tier.name].state is BreakerState.CLOSED
        )

    async def _speculate(self, tier: TierConfig, routed: RoutedRequest, remaining: float | None) -> _Call | None:
        """Reach ``tier`` (the verify tier) through the draft tier; if that fails, the policy's
        fallback tier answers alone, and the trace says both."""
        pair = self.speculation
        request = pair.request(self.request_for(routed, tier.name))
        started = time.perf_counter()
        try:
            # The generation takes as long as the verify tier's would: its timeout bounds the call.
            answer = await self.tiers[pair.draft.name].generate(request, remaining, timeout_s=tier.timeout_s)
        except TierFailure as failure:
            stats = failure_stats(failure)
            latency = (time.perf_counter() - started) * 1e3
            cost = pair.cost(prompt_token_estimate(request) if stats.rounds else 0, stats)
            attempt = routed.add(tier.name, Outcome.TIER_OUTCOME_FAILED,
                                 f"speculation through {pair.draft.name!r} failed ({failure}); "
                                 f"falling back to {pair.fallback.name!r} alone", cost, latency)
            attempt.speculative.draft_tier = pair.draft.name
            attempt.speculative.stats.CopyFrom(stats)
            attempt.speculative.fallback_tier = pair.fallback.name
            self._on_tier_call(pair.draft.name, latency / 1e3, False)
            return await self._fall_back(pair.fallback, routed, remaining, started)
        except asyncio.CancelledError:
            self._cut(routed, tier, started, completion_tokens=0)
            raise
        latency = (time.perf_counter() - started) * 1e3
        self.breakers[pair.draft.name].record_success()
        self.breakers[tier.name].record_success()
        self._on_tier_call(pair.draft.name, latency / 1e3, True)
        attempt = router_pb2.SpeculativeAttempt(draft_tier=pair.draft.name)
        attempt.stats.CopyFrom(answer.speculative)
        return _Call(answer, pair.cost(answer.usage.prompt_tokens, answer.speculative), latency, speculative=attempt)

    async def _fall_back(
        self, fallback: TierConfig, routed: RoutedRequest, remaining: float | None, started: float
    ) -> _Call | None:
        """The fallback tier's own answer (None, recorded, if it fails or its breaker is open)."""
        if remaining is not None:
            remaining -= time.perf_counter() - started
        self.request_for(routed, fallback.name)
        breaker = self.breakers[fallback.name]
        if not breaker.allow():
            routed.add(fallback.name, Outcome.TIER_OUTCOME_SKIPPED, f"circuit breaker {breaker.state.value}")
            return None
        call = await self._attempt(fallback, routed, remaining)
        return None if call is None else replace(call, fallback_of=fallback)

    async def _stream_last(
        self, tier: TierConfig, routed: RoutedRequest, remaining: float | None, started: float
    ) -> AsyncIterator[generator_pb2.GenerateResponse]:
        """Stream the last reachable tier to the client; on a failure before the first chunk,
        return without an accepted tier so the cascade falls back."""
        call_started = time.perf_counter()
        generated = 0  # tokens streamed so far (each chunk carries its tokens' log-probs)
        streamed: list[generator_pb2.GenerateResponse] = []
        try:
            async for chunk in self.tiers[tier.name].stream(self.request_for(routed, tier.name), remaining):
                if chunk.is_final:
                    cost = tier.cost.cost(chunk.usage.prompt_tokens, chunk.usage.completion_tokens)
                    latency = (time.perf_counter() - call_started) * 1e3
                    routed.add(tier.name, Outcome.TIER_OUTCOME_ACCEPTED, "last stage", cost, latency)
                    whole = generator_pb2.GenerateResponse()
                    whole.CopyFrom(chunk)
                    whole.text = "".join(part.text for part in streamed) + chunk.text
                    for part in streamed:
                        whole.logprobs.extend(part.logprobs)
                    routed.saw(tier.name, whole, cost, None)
                    self.breakers[tier.name].record_success()
                    self._on_tier_call(tier.name, latency / 1e3, True)
                    final = self._finish(chunk, routed, tier.name, started)
                    break
                generated += max(len(chunk.logprobs), 1)
                kept = generator_pb2.GenerateResponse()
                kept.CopyFrom(chunk)
                streamed.append(kept)
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
        cost = tier.cost.cost(prompt_token_estimate(self.request_for(routed, tier.name)), completion_tokens)
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
