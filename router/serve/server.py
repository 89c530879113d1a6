"""The router service: the Router gRPC contract in front of the cascade.

Per request: authenticate (the shared plumbing maps the API key to a tenant), plan the
cascade from the policy and the request's routing options, reserve the tenant's worst-case
cost in the store, run the cascade, then settle the actual cost and write exactly one ledger
row, whatever the outcome. An answer is only returned once its row is written; a request that
fails or is cancelled is booked in the background. The policy reloads on SIGHUP and on file
change; a bad file is logged and the last good policy stays.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import signal
import socket
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Callable, Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import grpc

from tierlm import tracing
from tierlm.auth import KeyRing
from tierlm.client import QUOTA_KEY
from tierlm.config import LimitsConfig, Policy, TenantConfig, load_policy, load_tenants
from tierlm.router.serve import telemetry
from tierlm.router.serve.breaker import BreakerState, CircuitBreaker
from tierlm.router.learn.traffic import policy_version
from tierlm.router.encoder_choice import encoder_key, exact_encoder, rescores, serving_encoder
from tierlm.router.serve.batcher import EncodeBatcher
from tierlm.router.serve.cascade import CascadeError, CascadePlan, CascadeRunner, plan
from tierlm.router.serve.learning import TrafficLearning
from tierlm.router.serve.in_router import InRouterTier, in_router_tiers
from tierlm.router.serve.prompts import TierPrompts, needs_encoder, policy_pool, pool_index
from tierlm.router.serve.query import RequestQuery
from tierlm.router.serve.response_cache import ResponseCache, cache_key
from tierlm.router.serve.scoring import AnswerScorer, load_scorer
from tierlm.router.serve.speculative import SpeculativePair, check_tokenizers
from tierlm.router.store import (
    BudgetExceeded, DuplicateRequest, LedgerRow, NotYourRequest, Reservation, Store, StoreUnavailable, UnknownRequest,
    Verdict, open_store,
)
from tierlm.router.serve.tiers import TierClient
from tierlm.serving import GrpcServer, ServerConfig, current_tenant
from tierlm.sockets import ROUTER_SOCKET_TAIL, socket_root
from tierlm.v1 import generator_pb2, router_pb2, router_pb2_grpc

if TYPE_CHECKING:
    from tierlm.router.serve.http_server import HttpOptions

log = logging.getLogger(__name__)

# Tenant name for calls when auth is off (`--no-auth`).
ANONYMOUS = "anonymous"
_SECONDS_PER_DAY = 86_400
#: Which replica wrote a ledger row.
ROUTER_ID = f"{socket.gethostname()}:{os.getpid()}"
#: How often each router sweeps for holds whose lease ran out (at most: see sweep_expired).
LEASE_SWEEP_S = 5.0
#: Pauses between attempts to book a request that ended without an answer while the store is down.
LATE_BOOKING_RETRIES_S = (0.5, 1.0, 2.0, 4.0, 8.0, 15.0, 30.0)


@dataclass(frozen=True)
class _Generation:
    """Everything derived from one policy; swapped as a whole on reload."""

    policy: Policy
    tenants: dict[str, TenantConfig]
    runner: CascadeRunner
    cache: ResponseCache | None
    learning: TrafficLearning


class _TimedScorer:
    """Records every scoring call's latency; the scorer itself stays metrics-free."""

    def __init__(self, scorer: AnswerScorer):
        self._scorer = scorer

    async def score(self, query: RequestQuery, answer: generator_pb2.GenerateResponse, tier: str) -> float:
        with telemetry.SCORER_SECONDS.time():
            return await self._scorer.score(query, answer, tier)


class RouterService(router_pb2_grpc.RouterServicer):
    def __init__(self, policy_path: Path, store: Store, tenants_path: Path | None = None, *, auth: bool = True):
        self.policy_path = policy_path
        self.tenants_path = tenants_path
        self.store = store
        # Off only when the operator said so (`--no-auth`); no tenants then means no caller.
        self.auth = auth
        self._clients: dict[str, TierClient | InRouterTier] = {}
        self._breakers: dict[str, CircuitBreaker] = {}
        # Work that outlives a request's handler: bookings of requests that ended without an
        # answer, explorations; stopping the router waits for them (drain_background).
        self._background: set[asyncio.Task] = set()
        self._generation: _Generation | None = None
        self._inflight = 0
        # One sentence encoder per policy encoder (router/encoder_choice.py; MiniLM as int8 ONNX,
        # no torch), built when a policy first needs one and shared by retrieval and the scorer
        # through one batcher: each request's query is embedded once, off the event loop, batched
        # with concurrent requests' (RequestQuery). Kept across reloads: requests of the previous
        # generation may still be using one.
        self._batchers: dict[str, EncodeBatcher] = {}
        # MiniLM in float32, for the few scores too close to a threshold to trust int8 with.
        self._exact: EncodeBatcher | None = None
        self._on_keys_changed: list[Callable[[KeyRing | None], None]] = []
        self._apply(*self._read_files())

    # -- policy ---------------------------------------------------------------------------

    def _read_files(self) -> tuple[Policy, dict[str, TenantConfig], str]:
        version = policy_version(self.policy_path)
        policy = load_policy(self.policy_path)
        tenants = dict(policy.tenants)
        if self.tenants_path is not None:
            extra = load_tenants(self.tenants_path)
            clash = sorted(set(extra) & set(tenants))
            if clash:
                raise ValueError(f"{self.tenants_path}: tenants {clash} are also defined in {self.policy_path}")
            tenants.update(extra)
        return policy, tenants, version

    def _apply(self, policy: Policy, tenants: dict[str, TenantConfig], version: str) -> None:
        # Everything that can fail (loading the scorer, the prompt builders) comes before the
        # first change to the running state, so a failed reload leaves it untouched.
        batcher = None
        if needs_encoder(policy):
            key = encoder_key(policy)
            if key not in self._batchers:
                self._batchers[key] = EncodeBatcher(serving_encoder(policy))
            batcher = self._batchers[key]
        exact = None
        if policy.scorer is not None and rescores(policy):
            if self._exact is None:
                self._exact = EncodeBatcher(exact_encoder())
            exact = self._exact
        scorer = load_scorer(policy, batcher, exact)
        pool = policy_pool(policy)
        index = pool_index(policy, pool, batcher.encoder if batcher else None)
        prompts = TierPrompts.from_policy(policy, pool, index)
        in_router = in_router_tiers(policy, pool, index, batcher)
        # Retrieval's and in-router tiers' similarities come with the query's embedding: one
        # product for the whole batch.
        compare, exact_embed = (batcher.embed_compared if batcher else None), (exact.embed if exact else None)
        pools = (index,) if index is not None else ()
        check_tokenizers(policy)
        retired = []
        for tier in policy.tiers:
            client = self._clients.get(tier.name)
            if tier.in_router:
                # Rebuilt on every reload: it holds the pool and encoder of this generation.
                if client is not None:
                    retired.append(client)
                self._clients[tier.name] = in_router[tier.name]
            elif client is None or client.config != tier:
                if client is not None:
                    retired.append(client)
                self._clients[tier.name] = TierClient(tier)
            breaker = self._breakers.get(tier.name)
            if breaker is None or (breaker.failures_to_open, breaker.cooldown_s) != (
                policy.breaker.failures_to_open, policy.breaker.cooldown_s
            ):
                self._breakers[tier.name] = CircuitBreaker(policy.breaker.failures_to_open, policy.breaker.cooldown_s)
        for gone in set(self._clients) - {t.name for t in policy.tiers}:
            retired.append(self._clients.pop(gone))
            self._breakers.pop(gone, None)
        runner = CascadeRunner(
            dict(self._clients), dict(self._breakers), _TimedScorer(scorer), self._observe_tier,
            rewrite=prompts.rewrite,
            query_of=lambda request: RequestQuery(prompts.query_text(request), exact=exact_embed, compare=compare, pools=pools),
            speculation=SpeculativePair.from_policy(policy),
        )
        cache = ResponseCache(policy.cache.max_entries, policy.cache.ttl_s) if policy.cache.enabled else None
        learning = TrafficLearning(policy, version, self.store, runner, ROUTER_ID)
        self._generation = _Generation(policy, tenants, runner, cache, learning)
        if policy.learning.record:
            self._in_background(learning.seed(), "filling the live calibration windows")
        self._warn_about_auth()
        for listener in self._on_keys_changed:
            listener(self.key_ring())
        if retired:
            # In-flight calls still hold the old clients; close them once every timeout has passed.
            grace = max(c.config.timeout_s for c in retired) + 1.0
            asyncio.get_event_loop().call_later(grace, lambda: [asyncio.ensure_future(c.close()) for c in retired])

    def reload(self) -> bool:
        """Re-read the policy (and tenants) file; keep the running policy if the new one is bad.

        Whatever goes wrong (a bad field, unreadable or hostile files, a scorer that fails to
        load) is logged and counted, never raised: the router keeps serving the last good policy."""
        try:
            self._apply(*self._read_files())
        except Exception as exc:  # noqa: BLE001 - any failure of a reload leaves the running policy
            telemetry.POLICY_RELOADS.labels("rejected").inc()
            log.error("policy reload rejected, keeping the last good policy:\n%s", exc)
            return False
        telemetry.POLICY_RELOADS.labels("applied").inc()
        log.info("policy reloaded from %s", self.policy_path)
        return True

    @property
    def policy(self) -> Policy:
        assert self._generation is not None
        return self._generation.policy

    def key_ring(self) -> KeyRing | None:
        """The tenants' keys; None (anyone may call) only when auth was switched off. With auth on,
        no tenants is an empty ring, which refuses every call."""
        assert self._generation is not None
        if not self.auth:
            return None
        return KeyRing({t.key_sha256: name for name, t in self._generation.tenants.items()})

    def _warn_about_auth(self) -> None:
        """Said at start and on every reload, so an open router is never a quiet surprise."""
        assert self._generation is not None
        if not self.auth:
            log.warning("authentication is OFF (--no-auth): anyone who reaches this router may call it and spend "
                        "as tenant %r; tenants in the policy are ignored", ANONYMOUS)
        elif not self._generation.tenants:
            log.warning("no tenants are configured: every call is refused (UNAUTHENTICATED) until a tenant is added")

    def on_keys_changed(self, listener: Callable[[KeyRing | None], None]) -> None:
        self._on_keys_changed.append(listener)

    def file_watch(self) -> _FileWatch:
        """A watch on the policy and tenants files, as they are now (take it before the router
        announces it is ready, so no change made after that can go unseen)."""
        return _FileWatch([p for p in (self.policy_path, self.tenants_path) if p is not None])

    async def watch_files(self, watch: _FileWatch, interval_s: float = 1.0) -> None:
        """Reload whenever a watched file changes; nothing a file does ends the watch."""
        while True:
            await asyncio.sleep(interval_s)
            try:
                if watch.changed():
                    self.reload()
            except Exception:  # the watcher must outlive anything a file can do to it
                log.exception("policy watcher: checking %s failed; still watching", self.policy_path)

    def _observe_tier(self, tier: str, seconds: float, ok: bool) -> None:
        telemetry.TIER_SECONDS.labels(tier, str(ok).lower()).observe(seconds)
        breaker = self._breakers.get(tier)
        if breaker is not None:
            telemetry.BREAKER_OPEN.labels(tier).set(0 if breaker.state is BreakerState.CLOSED else 1)

    # -- RPCs -------------------------------------------------------------------------------

    async def Complete(self, request: router_pb2.CompleteRequest, context: grpc.aio.ServicerContext):
        replies = self._route(request, context, stream=False)
        try:
            return await anext(replies)
        finally:
            # Run _route's bookkeeping (ledger row, budget) now, not whenever the generator is collected.
            await replies.aclose()

    async def CompleteStream(self, request: router_pb2.CompleteRequest, context: grpc.aio.ServicerContext):
        async for reply in self._route(request, context, stream=True):
            yield reply

    async def GetUsage(self, request: router_pb2.UsageRequest, context: grpc.aio.ServicerContext):
        caller = current_tenant.get() or ANONYMOUS
        tenant = request.tenant or caller
        if tenant != caller:
            await context.abort(grpc.StatusCode.PERMISSION_DENIED, f"tenant {caller!r} may not read tenant {tenant!r}'s usage")
        try:
            summary = await self.store.summarize(tenant, request.since_unix_s)
        except StoreUnavailable as exc:
            await context.abort(grpc.StatusCode.UNAVAILABLE, f"the ledger is unavailable: {exc}")
        return router_pb2.UsageResponse(
            tenant=tenant, requests=summary.requests, answered=summary.ok, cost=summary.cost,
            prompt_tokens=summary.prompt_tokens, completion_tokens=summary.completion_tokens,
            answers_by_tier=summary.by_tier,
        )

    async def Feedback(self, request: router_pb2.FeedbackRequest, context: grpc.aio.ServicerContext):
        problem = feedback_problem(request)
        if problem is not None:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, problem)
        tenant = current_tenant.get() or ANONYMOUS
        assert self._generation is not None
        try:
            stored = await self._generation.learning.feedback(request.request_id, tenant, verdict_of(request))
        except UnknownRequest:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"no request {request.request_id!r} in the ledger")
        except NotYourRequest:
            await context.abort(grpc.StatusCode.PERMISSION_DENIED,
                                f"request {request.request_id!r} is not tenant {tenant!r}'s: feedback only on your own requests")
        except StoreUnavailable as exc:
            await context.abort(grpc.StatusCode.UNAVAILABLE, f"the ledger is unavailable: {exc}")
        return router_pb2.FeedbackResponse(request_id=request.request_id, stored=stored)

    async def _route(
        self, request: router_pb2.CompleteRequest, context: grpc.aio.ServicerContext, stream: bool
    ) -> AsyncIterator[router_pb2.CompleteResponse]:
        generation = self._generation
        assert generation is not None
        tenant = current_tenant.get() or ANONYMOUS
        inner = generator_pb2.GenerateRequest()
        inner.CopyFrom(request.request)
        inner.tenant = tenant
        inner.request_id = inner.request_id or uuid.uuid4().hex
        # What the ledger row says, however the request ends: the trace fills in as tiers are
        # tried (the runner writes into it), so a cancelled request still names what it used.
        book = _Booking(tenant, inner, time.perf_counter())
        self._inflight += 1
        try:
            self._admit(generation, request)
            cascade_plan = self._plan(generation, request, tenant)
            key = cache_key(tenant, request) if generation.cache is not None else None
            cached = generation.cache.get(key) if key is not None else None
            if cached is not None:
                telemetry.CACHE_HITS.inc()
                book.answer = cached
                book.trace.accepted_tier = cached.tier
                book.trace.attempts.add(tier=cached.tier, outcome=router_pb2.TIER_OUTCOME_ACCEPTED, reason="response cache hit")
                await self._finish(book)
                yield router_pb2.CompleteResponse(answer=cached, trace=book.trace)
                return
            budget = self._daily_budget(generation, tenant)
            # Priced up front only when a budget needs the worst case before any tier is called.
            priced = budget is not None or cascade_plan.budget_per_query is not None
            routed = await generation.runner.prepare(inner, cascade_plan, priced=priced)
            book.trace = routed.trace
            explore = generation.learning.explores()
            if budget is not None:
                book.reservation = await self._reserve(generation, book, routed.worst_case_cost(cascade_plan), budget, cascade_plan)
            remaining = context.time_remaining()
            deadline = None if remaining is None else time.monotonic() + remaining
            if stream:
                async for chunk in generation.runner.stream(routed, cascade_plan, deadline):
                    if chunk.is_final:
                        book.answer = chunk
                        book.details = await generation.learning.details(routed, explore)
                        await self._finish(book)
                        if explore:
                            self._in_background(generation.learning.explore(routed), f"exploring request {inner.request_id}")
                        yield router_pb2.CompleteResponse(answer=chunk, trace=routed.trace)
                    else:
                        yield router_pb2.CompleteResponse(answer=chunk)
            else:
                book.answer = await generation.runner.complete(routed, cascade_plan, deadline)
                book.details = await generation.learning.details(routed, explore)
                await self._finish(book)
                if explore:
                    self._in_background(generation.learning.explore(routed), f"exploring request {inner.request_id}")
                if key is not None:
                    generation.cache.put(key, book.answer)
                # Complete() takes this reply and closes the generator: nothing may follow the yield.
                yield router_pb2.CompleteResponse(answer=book.answer, trace=routed.trace)
        except _Refused as refusal:
            book.code = refusal.code
            if refusal.code is not grpc.StatusCode.UNAVAILABLE:  # a store known to be down is retried later instead
                await self._finish_before_telling(book)
            await context.abort(refusal.code, str(refusal), trailing_metadata=refusal.metadata)
        except CascadeError as exc:
            book.code = exc.code
            await context.abort(exc.code, str(exc))
        except asyncio.CancelledError:
            book.code = grpc.StatusCode.CANCELLED
            raise
        except GeneratorExit:
            # The caller stopped reading: after the final answer (Complete() always does) that is
            # the end of a routed request; before it, the client went away mid-stream.
            if book.answer is None:
                book.code = grpc.StatusCode.CANCELLED
            raise
        except grpc.aio.AbortError:
            raise
        except Exception:
            book.code = grpc.StatusCode.INTERNAL
            log.exception("routing request %s failed", inner.request_id)
            raise
        finally:
            self._inflight -= 1
            if not book.finished:
                self._finish_later(book)

    def _admit(self, generation: _Generation, request: router_pb2.CompleteRequest) -> None:
        """Refuse a request the router will not route: over capacity, or invalid."""
        limit = generation.policy.limits.max_concurrent_requests
        if self._inflight > limit:
            raise _Refused(grpc.StatusCode.RESOURCE_EXHAUSTED, f"router is at max_concurrent_requests {limit}; retry shortly",
                           (("retry-after-s", "1"),))
        problem = request_problem(request, generation.policy.limits)
        if problem is not None:
            raise _Refused(grpc.StatusCode.INVALID_ARGUMENT, problem)

    def refused_key(self, method: str, request: object) -> None:
        """A call refused for its key: a Complete that names a known tenant gets that tenant's
        ledger row (a leaked or rotated key shows up in its owner's usage); others only count."""
        telemetry.AUTH_FAILURES.inc()
        generation = self._generation
        if not isinstance(request, router_pb2.CompleteRequest) or generation is None:
            return
        tenant = request.request.tenant
        if tenant in generation.tenants:
            inner = generator_pb2.GenerateRequest()
            inner.CopyFrom(request.request)
            inner.request_id = inner.request_id or uuid.uuid4().hex
            self._finish_later(_Booking(tenant, inner, time.perf_counter(), code=grpc.StatusCode.UNAUTHENTICATED))

    def _plan(self, generation: _Generation, request: router_pb2.CompleteRequest, tenant: str) -> CascadePlan:
        config = generation.tenants.get(tenant)
        try:
            return plan(generation.policy, request.routing, config.budget_per_query if config else None)
        except ValueError as exc:  # a routing option the policy cannot apply
            raise _Refused(grpc.StatusCode.INVALID_ARGUMENT, str(exc)) from None

    @staticmethod
    def _daily_budget(generation: _Generation, tenant: str) -> float | None:
        config = generation.tenants.get(tenant)
        return None if config is None else config.budget_per_day

    async def _reserve(
        self, generation: _Generation, book: _Booking, worst_case: float, budget_per_day: float, cascade_plan: CascadePlan
    ) -> Reservation:
        """Hold the request's worst-case cost under its tenant's daily budget."""
        # The hold outlives every tier the request may call, then any router's sweep frees it.
        lease_s = sum(tier.timeout_s for tier in cascade_plan.tiers) + generation.policy.limits.lease_margin_s
        try:
            return await self.store.reserve(book.request.request_id, book.tenant, worst_case, budget_per_day, lease_s)
        except BudgetExceeded as exc:
            seconds_left = _SECONDS_PER_DAY - time.time() % _SECONDS_PER_DAY
            raise _Refused(grpc.StatusCode.RESOURCE_EXHAUSTED, str(exc), (
                ("retry-after-s", f"{seconds_left:.0f}"),
                (QUOTA_KEY, "budget"),  # a spent budget, not load: the OpenAI front says insufficient_quota
            )) from None
        except DuplicateRequest as exc:
            raise _Refused(grpc.StatusCode.ALREADY_EXISTS, str(exc)) from None
        except StoreUnavailable as exc:
            raise _Refused(grpc.StatusCode.UNAVAILABLE, f"the budget store is unavailable: {exc}") from None

    async def _finish(self, book: _Booking) -> None:
        """Settle the budget and write the request's one ledger row, then count it; an answer
        whose row cannot be written is not returned."""
        trace, answer, code = book.trace, book.answer, book.code
        called = [a.tier for a in trace.attempts if a.outcome != router_pb2.TIER_OUTCOME_SKIPPED]
        usage = answer.usage if answer is not None and code is grpc.StatusCode.OK else generator_pb2.Usage()
        row = LedgerRow(
            request_id=book.request.request_id, tenant=book.tenant, tiers=called, accepted_tier=trace.accepted_tier,
            prompt_tokens=usage.prompt_tokens, completion_tokens=usage.completion_tokens, cost=trace.total_cost,
            latency_ms=(time.perf_counter() - book.started) * 1e3, outcome=code.name, router=ROUTER_ID,
            details=book.details if code is grpc.StatusCode.OK else None,
        )
        try:
            await self.store.finish(row, book.reservation)
        except StoreUnavailable as exc:
            if code is grpc.StatusCode.OK:  # not answered yet: the client is told, and no row is owed
                book.code = grpc.StatusCode.UNAVAILABLE
                raise _Refused(grpc.StatusCode.UNAVAILABLE, f"the answer could not be ledgered: {exc}") from None
            raise
        book.finished = True
        telemetry.REQUESTS.labels(code.name).inc()
        telemetry.TENANT_COST.labels(book.tenant).inc(row.cost)
        for before, after in zip(called, called[1:]):
            telemetry.ESCALATIONS.labels(before, after).inc()
        if code is grpc.StatusCode.OK:
            telemetry.ANSWERS.labels(trace.accepted_tier).inc()
            telemetry.PROMPT_TOKENS.labels(book.tenant, trace.accepted_tier).inc(usage.prompt_tokens)
            telemetry.COMPLETION_TOKENS.labels(book.tenant, trace.accepted_tier).inc(usage.completion_tokens)
        _trace_outcome(book.tenant, book.request.request_id, trace, usage)

    async def _finish_before_telling(self, book: _Booking) -> None:
        """Ledger a refusal before the client hears it: a refusal is final (the SDK does not
        retry it), so a replica killed right after refusing must not take the row with it."""
        try:
            await self._finish(book)
        except StoreUnavailable:
            pass  # the handler's `finally` books it in the background, with retries

    def _finish_later(self, book: _Booking) -> None:
        """Book a request that ended without an answer, outside its (possibly cancelled)
        handler; a store that is down is retried for a while before the row is given up."""

        async def finish() -> None:
            for delay in LATE_BOOKING_RETRIES_S:
                try:
                    await self._finish(book)
                    return
                except StoreUnavailable:
                    await asyncio.sleep(delay)
                except Exception:  # noqa: BLE001 - counted and logged below: a lost row must not vanish silently
                    log.exception("booking request %s failed", book.request.request_id)
                    break
            telemetry.LEDGER_WRITES_LOST.inc()
            log.error("request %s (tenant %s, %s) could not be ledgered", book.request.request_id, book.tenant, book.code.name)

        self._in_background(finish(), f"booking request {book.request.request_id}")

    def _in_background(self, work: Coroutine[object, object, None], what: str) -> None:
        """Run ``work`` outside any request's handler; its failure is logged, never lost."""

        async def run() -> None:
            try:
                await work
            except Exception:  # noqa: BLE001 - background work must not fail silently
                log.exception("%s failed", what)

        task = asyncio.get_running_loop().create_task(run())
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def drain_background(self, timeout_s: float = 10.0) -> None:
        """Wait (a bounded time) for bookings and explorations still running."""
        if self._background:
            await asyncio.wait(set(self._background), timeout=timeout_s)

    def close(self) -> None:
        """Stop the encoding threads (the store is the caller's to close)."""
        for batcher in [*self._batchers.values(), self._exact]:
            if batcher is not None:
                batcher.close()

    async def sweep_expired(self) -> None:
        """Release holds whose router died (their lease ran out), forever: at least once per
        lease margin, so a hold outlives its lease by no more than that."""
        while True:
            await asyncio.sleep(min(LEASE_SWEEP_S, self.policy.limits.lease_margin_s))
            try:
                released = await self.store.release_expired()
                if released:
                    log.warning("released %d budget holds whose lease ran out (a router died mid-request?)", released)
            except StoreUnavailable as exc:
                log.warning("lease sweep skipped: %s", exc)


class _FileWatch:
    """Which files changed since the last look. Kubernetes swaps ConfigMap files by symlink, so the
    resolved file's identity, mtime and size are compared, not the mtime alone."""

    def __init__(self, paths: list[Path]):
        self._paths = paths
        self._last = self._stamp()

    def _stamp(self) -> tuple:
        stamps = []
        for path in self._paths:
            try:
                st = os.stat(path)
                stamps.append((st.st_ino, st.st_mtime_ns, st.st_size))
            except OSError:
                stamps.append(None)
        return tuple(stamps)

    def changed(self) -> bool:
        current = self._stamp()
        changed, self._last = current != self._last, current
        return changed


class _Refused(Exception):
    """The router will not route this request; the client gets ``code`` and the message."""

    def __init__(self, code: grpc.StatusCode, message: str, metadata: tuple[tuple[str, str], ...] = ()):
        super().__init__(message)
        self.code = code
        self.metadata = metadata


@dataclass
class _Booking:
    """What one request's ledger row and budget settlement are made of."""

    tenant: str
    request: generator_pb2.GenerateRequest
    started: float
    trace: router_pb2.RoutingTrace = field(default_factory=router_pb2.RoutingTrace)
    answer: generator_pb2.GenerateResponse | None = None
    code: grpc.StatusCode = grpc.StatusCode.OK
    reservation: Reservation | None = None
    finished: bool = False
    details: str | None = None  # what learning records of an answered request


def request_problem(request: router_pb2.CompleteRequest, limits: LimitsConfig) -> str | None:
    """What is wrong with a request the router must refuse as INVALID_ARGUMENT, or None.

    Checked here, at the router, so a bad request never reaches (or is retried against) a tier."""
    inner, routing = request.request, request.routing
    which = inner.WhichOneof("input")
    if which is None or (which == "prompt" and not inner.prompt.strip()) or (
        which == "messages" and not any(m.content.strip() for m in inner.messages.messages)
    ):
        return "the request has no prompt (or no non-empty chat message)"
    if not 0 <= inner.max_tokens <= limits.max_tokens:
        return f"max_tokens must be in 0..{limits.max_tokens} (0: the tier's default), got {inner.max_tokens}"
    if not (math.isfinite(inner.temperature) and 0.0 <= inner.temperature <= 2.0):
        return f"temperature must be in [0, 2], got {inner.temperature}"
    if inner.HasField("top_p") and not (math.isfinite(inner.top_p) and 0.0 < inner.top_p <= 1.0):
        return f"top_p must be in (0, 1], got {inner.top_p}"
    if len(inner.choices) > limits.max_choices:
        return f"at most {limits.max_choices} choices, got {len(inner.choices)}"
    if routing.HasField("budget_per_query") and not (math.isfinite(routing.budget_per_query) and routing.budget_per_query >= 0):
        return f"budget_per_query must be a number >= 0, got {routing.budget_per_query}"
    return None


def _trace_outcome(tenant: str, request_id: str, trace: router_pb2.RoutingTrace, usage: generator_pb2.Usage) -> None:
    """The routing decision on the RPC's span: who asked, which tier answered, at what cost, and one
    event per tier the cascade considered (skipped ones included, with the reason)."""
    tracing.annotate(**{"tierlm.tenant": tenant, "tierlm.request_id": request_id, "tierlm.accepted_tier": trace.accepted_tier,
                        "tierlm.cost": trace.total_cost, "tierlm.prompt_tokens": usage.prompt_tokens,
                        "tierlm.completion_tokens": usage.completion_tokens})
    for attempt in trace.attempts:
        tracing.event("tier attempt", **{"tierlm.tier": attempt.tier, "tierlm.reason": attempt.reason, "tierlm.cost": attempt.cost,
                                         "tierlm.outcome": router_pb2.TierOutcome.Name(attempt.outcome)})


#: The longest request id and reference answer feedback may carry.
MAX_REQUEST_ID_CHARS = 256
MAX_REFERENCE_CHARS = 65_536


def feedback_problem(request: router_pb2.FeedbackRequest) -> str | None:
    """What is wrong with feedback the router must refuse as INVALID_ARGUMENT, or None."""
    if not request.request_id.strip() or len(request.request_id) > MAX_REQUEST_ID_CHARS:
        return f"request_id must be the id of an answered request (1..{MAX_REQUEST_ID_CHARS} characters)"
    which = request.WhichOneof("verdict")
    if which is None:
        return "feedback needs a verdict: correct (true/false), score in [0, 1] or a reference answer"
    if which == "score" and not (math.isfinite(request.score) and 0.0 <= request.score <= 1.0):
        return f"score must be in [0, 1], got {request.score}"
    if which == "reference" and not 0 < len(request.reference.strip()) <= MAX_REFERENCE_CHARS:
        return f"reference must be a non-empty answer of at most {MAX_REFERENCE_CHARS} characters"
    return None


def verdict_of(request: router_pb2.FeedbackRequest) -> Verdict:
    which = request.WhichOneof("verdict")
    return Verdict(**{which: getattr(request, which)})


async def start_router(
    policy_path: Path, config: ServerConfig, store: str | Path, tenants_path: Path | None = None, *, auth: bool = True
) -> tuple[GrpcServer, RouterService]:
    """Start the Router service on the shared plumbing with its store (a SQLite path or a
    PostgreSQL DSN); the caller owns stopping it (:func:`stop_router`).

    `auth=False` lets anyone call (as tenant "anonymous"); otherwise only the tenants' keys do,
    and a policy without tenants refuses every call."""
    opened = await open_store(store)
    try:
        service = RouterService(policy_path, opened, tenants_path, auth=auth)
    except BaseException:
        await opened.close()
        raise
    config.keys = service.key_ring()
    config.on_auth_failure = service.refused_key
    server = GrpcServer(config)
    service.on_keys_changed(lambda keys: setattr(server.config, "keys", keys))
    await server.start(
        [lambda s: router_pb2_grpc.add_RouterServicer_to_server(service, s)],
        service_names=[router_pb2.DESCRIPTOR.services_by_name["Router"].full_name],
    )
    return server, service


async def stop_router(server: GrpcServer, service: RouterService, grace_s: float = 1.0) -> None:
    """Stop serving, write the bookings still pending, close the store."""
    await server.stop(grace_s=grace_s)
    await service.drain_background()
    service.close()
    await service.store.close()


async def serve(
    policy_path: Path,
    config: ServerConfig,
    store: str | Path,
    tenants_path: Path | None = None,
    ready: Callable[[GrpcServer, int | None], None] | None = None,
    http: HttpOptions | None = None,
    *,
    auth: bool = True,
) -> None:
    """Run the router until SIGTERM/SIGINT; SIGHUP (or editing the files) reloads the policy.

    With `http`, the OpenAI-compatible HTTP API is served too (router/serve/openai_http.py), with
    the gRPC port's TLS settings; it reaches the Router service through a Unix socket in a private
    folder, never over plaintext TCP."""
    with tempfile.TemporaryDirectory(prefix="tierlm-router-", dir=socket_root(ROUTER_SOCKET_TAIL)) as private:  # 0700
        if http is not None:
            config.local_socket = Path(private) / "router.sock"
        server, service = await start_router(policy_path, config, store, tenants_path, auth=auth)
        http_server = None
        if http is not None:
            from tierlm.router.serve.http_server import serve_http
            from tierlm.router.serve.openai_http import build_app

            app = build_app(f"unix:{config.local_socket}", lambda: service.policy, lambda: server.config.keys,
                            config.max_request_bytes)
            try:
                http_server = await serve_http(app, http, config.tls)
            except BaseException:  # its port is taken, say: the gRPC side goes too
                await server.stop(0)
                service.close()
                await service.store.close()
                raise
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGHUP, service.reload)
        background = [asyncio.create_task(service.watch_files(service.file_watch())),
                      asyncio.create_task(service.sweep_expired())]
        if ready is not None:
            ready(server, http_server.port if http_server else None)
        try:
            await server.run_until_signal()
        finally:
            if http_server is not None:
                await http_server.stop()
            for task in background:
                task.cancel()
            loop.remove_signal_handler(signal.SIGHUP)
            await service.drain_background()
            service.close()
            await service.store.close()
