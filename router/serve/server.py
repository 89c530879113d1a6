"""The router service: the Router gRPC contract in front of the cascade.

Per request: authenticate (the shared plumbing maps the API key to a tenant), plan the
cascade from the policy and the request's routing options, reserve the tenant's worst-case
cost, run the cascade, settle the actual cost, and write exactly one ledger row, whatever
the outcome. The policy reloads on SIGHUP and on file change; a bad file is logged and the
last good policy stays.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path

import grpc

from tierlm.auth import KeyRing
from tierlm.config import Policy, TenantConfig, load_policy, load_tenants
from tierlm.errors import MissingResource
from tierlm.router.serve import telemetry
from tierlm.router.serve.breaker import BreakerState, CircuitBreaker
from tierlm.router.serve.budgets import BudgetExceeded, Reservation, TenantBudgets
from tierlm.router.embeddings import Encoder
from tierlm.router.serve.cascade import CascadeError, CascadeRunner, plan
from tierlm.router.serve.ledger import Ledger, LedgerRow
from tierlm.router.serve.prompts import TierPrompts, needs_encoder
from tierlm.router.serve.query import RequestQuery
from tierlm.router.serve.response_cache import ResponseCache, cache_key
from tierlm.router.serve.scoring import AnswerScorer, load_scorer
from tierlm.router.serve.tiers import TierClient
from tierlm.serving import GrpcServer, ServerConfig, current_tenant
from tierlm.v1 import generator_pb2, router_pb2, router_pb2_grpc

log = logging.getLogger(__name__)

# Tenant name for calls when the policy defines no tenants (auth off).
ANONYMOUS = "anonymous"
_SECONDS_PER_DAY = 86_400


@dataclass(frozen=True)
class _Generation:
    """Everything derived from one policy; swapped as a whole on reload."""

    policy: Policy
    tenants: dict[str, TenantConfig]
    runner: CascadeRunner
    cache: ResponseCache | None


class _TimedScorer:
    """Records every scoring call's latency; the scorer itself stays metrics-free."""

    def __init__(self, scorer: AnswerScorer):
        self._scorer = scorer

    def score(self, query: RequestQuery, answer: generator_pb2.GenerateResponse, tier: str) -> float:
        with telemetry.SCORER_SECONDS.time():
            return self._scorer.score(query, answer, tier)


class RouterService(router_pb2_grpc.RouterServicer):
    def __init__(self, policy_path: Path, ledger: Ledger, tenants_path: Path | None = None):
        self.policy_path = policy_path
        self.tenants_path = tenants_path
        self.ledger = ledger
        self._clients: dict[str, TierClient] = {}
        self._breakers: dict[str, CircuitBreaker] = {}
        self._budgets = TenantBudgets({}, ledger.spent_since)
        self._generation: _Generation | None = None
        self._inflight = 0
        # One sentence encoder per router, built when a policy first needs one and shared by
        # retrieval and the scorer (each request's query is embedded once, see RequestQuery).
        self._encoder: Encoder | None = None
        self._on_keys_changed: list[Callable[[KeyRing | None], None]] = []
        self._apply(*self._read_files())

    # -- policy ---------------------------------------------------------------------------

    def _read_files(self) -> tuple[Policy, dict[str, TenantConfig]]:
        policy = load_policy(self.policy_path)
        tenants = dict(policy.tenants)
        if self.tenants_path is not None:
            extra = load_tenants(self.tenants_path)
            clash = sorted(set(extra) & set(tenants))
            if clash:
                raise ValueError(f"{self.tenants_path}: tenants {clash} are also defined in {self.policy_path}")
            tenants.update(extra)
        return policy, tenants

    def _apply(self, policy: Policy, tenants: dict[str, TenantConfig]) -> None:
        # Everything that can fail (loading the scorer, the prompt builders) comes before the
        # first change to the running state, so a failed reload leaves it untouched.
        if needs_encoder(policy) and self._encoder is None:
            self._encoder = Encoder(threads=1)
        encoder = self._encoder if needs_encoder(policy) else None
        scorer = load_scorer(policy, encoder)
        prompts = TierPrompts.from_policy(policy, encoder)
        retired = []
        for tier in policy.tiers:
            client = self._clients.get(tier.name)
            if client is None or client.config != tier:
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
            rewrite=prompts.rewrite, query_of=lambda request: RequestQuery(prompts.query_text(request), encoder),
        )
        cache = ResponseCache(policy.cache.max_entries, policy.cache.ttl_s) if policy.cache.enabled else None
        self._generation = _Generation(policy, tenants, runner, cache)
        self._budgets.update_tenants(tenants)
        for listener in self._on_keys_changed:
            listener(self.key_ring())
        if retired:
            # In-flight calls still hold the old clients; close them once every timeout has passed.
            grace = max(c.config.timeout_s for c in retired) + 1.0
            asyncio.get_event_loop().call_later(grace, lambda: [asyncio.ensure_future(c.close()) for c in retired])

    def reload(self) -> bool:
        """Re-read the policy (and tenants) file; keep the running policy if the new one is bad."""
        try:
            self._apply(*self._read_files())
        except (ValueError, OSError, MissingResource) as exc:  # PolicyError and YamlSyntaxError are ValueErrors
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
        """None (auth off) when no tenant is configured."""
        assert self._generation is not None
        tenants = self._generation.tenants
        return KeyRing({t.key_sha256: name for name, t in tenants.items()}) if tenants else None

    def on_keys_changed(self, listener: Callable[[KeyRing | None], None]) -> None:
        self._on_keys_changed.append(listener)

    async def watch_files(self, interval_s: float = 1.0) -> None:
        """Reload when the policy or tenants file changes on disk (Kubernetes swaps ConfigMap
        files by symlink, so compare the resolved file's identity and mtime, not just mtime)."""

        def stamp() -> tuple:
            stamps = []
            for path in (self.policy_path, self.tenants_path):
                if path is not None:
                    try:
                        st = os.stat(path)
                        stamps.append((st.st_ino, st.st_mtime_ns, st.st_size))
                    except OSError:
                        stamps.append(None)
            return tuple(stamps)

        last = stamp()
        while True:
            await asyncio.sleep(interval_s)
            current = stamp()
            if current != last:
                last = current
                self.reload()

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
        summary = self.ledger.summarize(tenant, request.since_unix_s)
        return router_pb2.UsageResponse(
            tenant=tenant, requests=summary.requests, answered=summary.ok, cost=summary.cost,
            prompt_tokens=summary.prompt_tokens, completion_tokens=summary.completion_tokens,
            answers_by_tier=summary.by_tier,
        )

    async def _route(
        self, request: router_pb2.CompleteRequest, context: grpc.aio.ServicerContext, stream: bool
    ) -> AsyncIterator[router_pb2.CompleteResponse]:
        generation = self._generation
        assert generation is not None
        started = time.perf_counter()
        tenant = current_tenant.get() or ANONYMOUS
        inner = generator_pb2.GenerateRequest()
        inner.CopyFrom(request.request)
        inner.tenant = tenant
        inner.request_id = inner.request_id or uuid.uuid4().hex
        trace = router_pb2.RoutingTrace()
        answer: generator_pb2.GenerateResponse | None = None
        code = grpc.StatusCode.OK
        reservation = None
        limit = generation.policy.limits.max_concurrent_requests
        if self._inflight >= limit:
            telemetry.REQUESTS.labels("RESOURCE_EXHAUSTED").inc()
            await context.abort(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"router is at max_concurrent_requests {limit}; retry shortly",
                trailing_metadata=(("retry-after-s", "1"),),
            )
        self._inflight += 1
        try:
            try:
                cascade_plan = plan(generation.policy, request.routing, self._budgets.per_query_limit(tenant))
            except ValueError as exc:
                code = grpc.StatusCode.INVALID_ARGUMENT
                await context.abort(code, str(exc))
            key = cache_key(tenant, request) if generation.cache is not None else None
            cached = generation.cache.get(key) if key is not None else None
            if cached is not None:
                telemetry.CACHE_HITS.inc()
                answer = cached
                trace.accepted_tier = cached.tier
                trace.attempts.add(tier=cached.tier, outcome=router_pb2.TIER_OUTCOME_ACCEPTED, reason="response cache hit")
                yield router_pb2.CompleteResponse(answer=cached, trace=trace)
                return
            try:
                reservation = self._budgets.reserve(tenant, cascade_plan.worst_case_cost(inner))
            except BudgetExceeded as exc:
                code = grpc.StatusCode.RESOURCE_EXHAUSTED
                seconds_left = _SECONDS_PER_DAY - time.time() % _SECONDS_PER_DAY
                await context.abort(code, str(exc), trailing_metadata=(("retry-after-s", f"{seconds_left:.0f}"),))
            remaining = context.time_remaining()
            deadline = None if remaining is None else time.monotonic() + remaining
            if stream:
                async for chunk, trace in generation.runner.stream(inner, cascade_plan, deadline):
                    if chunk.is_final:
                        answer = chunk
                        yield router_pb2.CompleteResponse(answer=chunk, trace=trace)
                    else:
                        yield router_pb2.CompleteResponse(answer=chunk)
            else:
                answer, trace = await generation.runner.complete(inner, cascade_plan, deadline)
                if key is not None:
                    generation.cache.put(key, answer)
                # Complete() takes this reply and closes the generator: nothing may follow the yield.
                yield router_pb2.CompleteResponse(answer=answer, trace=trace)
        except CascadeError as exc:
            trace = exc.trace
            code = exc.code
            await context.abort(code, str(exc))
        except asyncio.CancelledError:
            code = grpc.StatusCode.CANCELLED
            raise
        except grpc.aio.AbortError:
            raise
        except Exception:
            code = grpc.StatusCode.INTERNAL
            log.exception("routing request %s failed", inner.request_id)
            raise
        finally:
            self._inflight -= 1
            self._book(tenant, inner, trace, answer, code, reservation, started)

    def _book(
        self,
        tenant: str,
        inner: generator_pb2.GenerateRequest,
        trace: router_pb2.RoutingTrace,
        answer: generator_pb2.GenerateResponse | None,
        code: grpc.StatusCode,
        reservation: Reservation | None,
        started: float,
    ) -> None:
        """Settle the budget, count metrics and write the request's one ledger row."""
        cost = trace.total_cost
        if reservation is not None:
            self._budgets.settle(reservation, cost)
        telemetry.REQUESTS.labels(code.name).inc()
        telemetry.TENANT_COST.labels(tenant).inc(cost)
        called = [a.tier for a in trace.attempts if a.outcome != router_pb2.TIER_OUTCOME_SKIPPED]
        for before, after in zip(called, called[1:]):
            telemetry.ESCALATIONS.labels(before, after).inc()
        if answer is not None and code is grpc.StatusCode.OK:
            telemetry.ANSWERS.labels(trace.accepted_tier).inc()
        usage = answer.usage if answer is not None else generator_pb2.Usage()
        self.ledger.record(
            LedgerRow(
                request_id=inner.request_id, tenant=tenant, tiers=called, accepted_tier=trace.accepted_tier,
                prompt_tokens=usage.prompt_tokens, completion_tokens=usage.completion_tokens, cost=cost,
                latency_ms=(time.perf_counter() - started) * 1e3, outcome=code.name,
            )
        )


async def start_router(
    policy_path: Path, config: ServerConfig, ledger_path: Path, tenants_path: Path | None = None
) -> tuple[GrpcServer, RouterService]:
    """Start the Router service on the shared plumbing; the caller owns stopping it."""
    ledger = Ledger(ledger_path)
    service = RouterService(policy_path, ledger, tenants_path)
    config.keys = service.key_ring()
    server = GrpcServer(config)
    service.on_keys_changed(lambda keys: setattr(server.config, "keys", keys))
    await server.start(
        [lambda s: router_pb2_grpc.add_RouterServicer_to_server(service, s)],
        service_names=[router_pb2.DESCRIPTOR.services_by_name["Router"].full_name],
    )
    return server, service


async def serve(
    policy_path: Path,
    config: ServerConfig,
    ledger_path: Path,
    tenants_path: Path | None = None,
    ready: Callable[[GrpcServer, int | None], None] | None = None,
    http_port: int | None = None,
) -> None:
    """Run the router until SIGTERM/SIGINT; SIGHUP (or editing the files) reloads the policy.

    With `http_port`, an OpenAI-compatible HTTP API is served too (router/openai_http.py)."""
    if http_port is not None and config.tls is not None:
        raise ValueError("the OpenAI HTTP endpoint talks to the router over loopback without TLS; run it without --tls-cert")
    server, service = await start_router(policy_path, config, ledger_path, tenants_path)
    http = None
    if http_port is not None:
        from tierlm.router.serve.openai_http import build_app, serve_http

        app = build_app(f"127.0.0.1:{server.port}", lambda: [t.name for t in service.policy.tiers])
        try:
            http = await serve_http(app, config.host, http_port)
        except BaseException:  # its port is taken, say: the gRPC side goes too
            await server.stop(0)
            service.ledger.close()
            raise
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGHUP, service.reload)
    watcher = asyncio.create_task(service.watch_files())
    if ready is not None:
        ready(server, http.servers[0].sockets[0].getsockname()[1] if http else None)
    try:
        await server.run_until_signal()
    finally:
        if http is not None:
            http.should_exit = True
            await http.task
        watcher.cancel()
        loop.remove_signal_handler(signal.SIGHUP)
        service.ledger.close()
