"""The router service against real Generator servers on 127.0.0.1."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import pytest
import yaml

from tests.support.aio import BackgroundLoop
from tests.support.echo_server import start_generator
from tierlm.auth import hash_key
from tierlm.client import (
    AsyncClient, Client, InvalidArgument, PermissionDenied, ResourceExhausted, RetryPolicy, Unauthenticated,
)
from tierlm.router.serve.server import start_router, stop_router
from tierlm.router.store.sqlite import SqliteStore
from tierlm.serving import ServerConfig
from tierlm.v1 import router_pb2

REPO = Path(__file__).resolve().parents[2]
KEYS = {"acme": "acme-key", "globex": "globex-key"}
EDGE_COST = {"per_call": 0.001}
CLOUD_COST = {"per_call": 0.01, "per_output_token": 0.001}


def write_policy(path: Path, edge_port: int, cloud_port: int, threshold: float = 0.5, **extra) -> None:
    policy = {
        "tiers": [
            # 10 s: scripted tiers answer at once, but on a loaded 2-core machine three 2 s timeouts
            # in a row opened the edge's breaker mid-test.
            {"name": "edge", "address": f"127.0.0.1:{edge_port}", "cost": EDGE_COST, "timeout_s": 10.0},
            {"name": "cloud", "address": f"127.0.0.1:{cloud_port}", "cost": CLOUD_COST, "timeout_s": 5.0},
        ],
        "cascade": {"order": ["edge", "cloud"], "thresholds": {"edge": threshold}},
        "tenants": {name: {"key_sha256": hash_key(key)} for name, key in KEYS.items()},
        "breaker": {"failures_to_open": 3, "cooldown_s": 60},
        **extra,
    }
    path.write_text(yaml.safe_dump(policy))


class Stack:
    def __init__(self, loop: BackgroundLoop, tmp: Path, edge_port: int, cloud_port: int, **policy_extra):
        self.loop = loop
        self.policy = tmp / "policy.yaml"
        self.ledger_path = tmp / "ledger.sqlite"
        self.edge_port, self.cloud_port = edge_port, cloud_port
        write_policy(self.policy, edge_port, cloud_port, **policy_extra)
        self.server, self.service = loop.run(start_router(self.policy, ServerConfig(), self.ledger_path))
        self.address = f"127.0.0.1:{self.server.port}"

    def client(self, tenant: str = "acme", **options) -> Client:
        return Client(self.address, api_key=KEYS.get(tenant, tenant), **options)

    def stop(self) -> None:
        self.loop.run(stop_router(self.server, self.service))

    def rows(self):
        """The ledger's rows (read from its file: also after the router stopped)."""

        async def read():
            store = SqliteStore(self.ledger_path)
            try:
                return await store.rows()
            finally:
                await store.close()

        return self.loop.run(read())


@pytest.fixture
def stack(loop, tiers, tmp_path):
    router = Stack(loop, tmp_path, tiers["edge"][0].port, tiers["cloud"][0].port)
    yield router
    router.stop()


def outcomes(completion) -> list[tuple[str, str]]:
    return [(a.tier, router_pb2.TierOutcome.Name(a.outcome)) for a in completion.trace.attempts]


def test_easy_queries_stay_on_the_edge_and_hard_ones_escalate(stack, tiers):
    with stack.client() as client:
        easy = client.complete("an easy one", max_tokens=4)
        hard = client.complete("a tricky one", max_tokens=4)
    assert (easy.tier, easy.text) == ("edge", "edge: an easy one")
    assert outcomes(easy) == [("edge", "TIER_OUTCOME_ACCEPTED")]
    assert easy.cost == pytest.approx(0.001)
    assert (hard.tier, hard.text) == ("cloud", "cloud: a tricky one")
    assert outcomes(hard) == [("edge", "TIER_OUTCOME_LOW_SCORE"), ("cloud", "TIER_OUTCOME_ACCEPTED")]
    edge_attempt = hard.trace.attempts[0]
    assert edge_attempt.has_score and edge_attempt.score < edge_attempt.threshold == 0.5
    assert hard.cost == pytest.approx(0.001 + 0.01 + 2 * 0.001)
    assert hard.logprobs == []  # asked for none, though the router asked the tiers for them


def test_streaming_sends_the_accepted_tiers_text(stack):
    with stack.client() as client:
        chunks = list(client.stream("a tricky streamed one", max_tokens=4))
    final = chunks[-1].completion
    assert final is not None and final.tier == "cloud"
    assert final.text.strip() == "cloud: a tricky streamed one"
    assert len(chunks) > 2  # the last tier streams word by word


def test_routing_options(stack):
    with stack.client() as client:
        assert client.complete("an easy one", force_tier="cloud").tier == "cloud"
        capped = client.complete("a tricky one", max_tier="edge")
        assert capped.tier == "edge" and outcomes(capped) == [("edge", "TIER_OUTCOME_ACCEPTED")]
        started = time.perf_counter()
        with pytest.raises(InvalidArgument, match="force_tier 'gpu' is not a tier"):
            client.complete("x", force_tier="gpu")
        assert time.perf_counter() - started < 1.0  # no retries on INVALID_ARGUMENT
        # The per-query budget leaves no room for the cloud tier.
        cheap = client.complete("a tricky one", budget_per_query=0.005)
        assert cheap.tier == "edge"
        assert outcomes(cheap)[1] == ("cloud", "TIER_OUTCOME_SKIPPED")


def test_auth_and_ledger_privacy(stack):
    with stack.client(tenant="nobody") as client, pytest.raises(Unauthenticated):
        client.complete("hello")
    with Client(stack.address) as keyless, pytest.raises(Unauthenticated):
        keyless.complete("hello")
    with stack.client("acme") as acme:
        acme.complete("an easy one")
        mine = acme.usage()
        assert (mine.tenant, mine.requests, mine.answers_by_tier["edge"]) == ("acme", 1, 1)
        with pytest.raises(PermissionDenied):
            acme.usage(tenant="globex")


def test_dead_first_tier_is_skipped_then_breaker_opens(loop, stack, tiers):
    loop.run(tiers["edge"][0].stop(grace_s=0))
    with stack.client() as client:
        answers = [client.complete("an easy one") for _ in range(5)]
    assert all(a.tier == "cloud" for a in answers)
    first = outcomes(answers[0])
    assert first[0] == ("edge", "TIER_OUTCOME_FAILED") and "UNAVAILABLE" in answers[0].trace.attempts[0].reason
    # failures_to_open = 3: the fourth request no longer calls the edge.
    assert outcomes(answers[3])[0] == ("edge", "TIER_OUTCOME_SKIPPED")
    assert "circuit breaker open" in answers[3].trace.attempts[0].reason


def test_restarted_tier_is_used_again_within_seconds(loop, tiers, tmp_path):
    """The edge is down for 12 s of traffic, then back on its port: the router's channel must
    reconnect within the breaker's cool-down plus its capped backoff (gRPC's default backoff
    would have grown past 6 s by then and kept the healthy node unused)."""
    edge_server, edge = tiers["edge"]
    router = Stack(loop, tmp_path, edge_server.port, tiers["cloud"][0].port, breaker={"failures_to_open": 1, "cooldown_s": 0.2})
    try:
        loop.run(edge_server.stop(grace_s=0))
        with router.client(retry=RetryPolicy(attempts=1)) as client:
            down_until = time.monotonic() + 12
            while time.monotonic() < down_until:
                assert client.complete("an easy one").tier == "cloud"
                time.sleep(0.1)
            restarted = loop.run(start_generator(ServerConfig(port=edge_server.port), edge))
            back = time.monotonic()
            try:
                while client.complete("an easy one").tier != "edge":
                    assert time.monotonic() - back < 3.5, "the router did not use the restarted edge within 3.5 s"
                    time.sleep(0.05)
            finally:
                loop.run(restarted.stop(grace_s=0))
    finally:
        router.stop()


def test_every_tier_down_is_one_clear_error(loop, stack, tiers):
    for server, _ in tiers.values():
        loop.run(server.stop(grace_s=0))
    with stack.client(retry=RetryPolicy(attempts=1)) as client, pytest.raises(Exception) as err:
        client.complete("anything", timeout_s=10)
    assert err.value.code == grpc.StatusCode.UNAVAILABLE
    assert "no tier could answer" in str(err.value)


def test_daily_budget_holds_under_concurrency(loop, tiers, tmp_path):
    router = Stack(loop, tmp_path, tiers["edge"][0].port, tiers["cloud"][0].port)
    try:
        policy = yaml.safe_load(router.policy.read_text())
        policy["tenants"]["acme"]["budget_per_day"] = 0.25
        router.policy.write_text(yaml.safe_dump(policy))
        assert router.service.reload()

        def one(_):
            with router.client(retry=RetryPolicy(attempts=1)) as client:
                try:
                    return client.complete("a tricky one", max_tokens=2).cost
                except ResourceExhausted as exc:
                    assert "budget_per_day" in str(exc)
                    return None

        with ThreadPoolExecutor(16) as pool:
            costs = list(pool.map(one, range(64)))
        spent = sum(c for c in costs if c is not None)
        assert any(c is None for c in costs) and any(c is not None for c in costs)
        assert spent <= 0.25 + 1e-12
        assert sum(r.cost for r in router.rows() if r.tenant == "acme") == pytest.approx(spent)
    finally:
        router.stop()


def test_reload_changes_routing_and_rejects_bad_files(stack):
    with stack.client() as client:
        assert client.complete("a tricky one").tier == "cloud"
        write_policy(stack.policy, stack.edge_port, stack.cloud_port, threshold=0.0)
        assert stack.service.reload()
        assert client.complete("a tricky one").tier == "edge"
        stack.policy.write_text(stack.policy.read_text().replace("threshold", "threshhold").replace("edge: 0.0", "edge: 7"))
        assert not stack.service.reload()
        assert client.complete("a tricky one").tier == "edge"  # the last good policy stays


def test_async_client_and_retry_until_the_server_starts(loop, tiers, tmp_path):
    import asyncio
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    policy = tmp_path / "policy.yaml"
    write_policy(policy, tiers["edge"][0].port, tiers["cloud"][0].port)
    started: dict = {}

    def start_late():
        time.sleep(0.8)
        started["router"] = loop.run(start_router(policy, ServerConfig(port=port), tmp_path / "ledger.sqlite"))

    threading.Thread(target=start_late).start()
    try:
        with Client(f"127.0.0.1:{port}", api_key=KEYS["acme"], retry=RetryPolicy(attempts=20, max_backoff_s=0.3)) as client:
            assert client.complete("an easy one").tier == "edge"

        async def use_async():
            async with AsyncClient(f"127.0.0.1:{port}", api_key=KEYS["acme"]) as client:
                answer = await client.complete("a tricky one")
                chunks = [c async for c in client.stream("an easy one")]
                return answer, chunks, await client.usage()

        answer, chunks, usage = asyncio.run(use_async())
        assert answer.tier == "cloud"
        assert chunks[-1].completion.tier == "edge"
        assert (usage.tenant, usage.requests) == ("acme", 3)
    finally:
        server, service = started["router"]
        loop.run(stop_router(server, service, grace_s=0))


def test_killed_tier_under_load_loses_nothing(loop, tiers, tmp_path):
    """2,000 requests, 32 concurrent; the first tier's process is killed halfway."""
    edge = subprocess.Popen(
        [sys.executable, "-m", "tests.support.echo_server", "--kind", "scripted", "--name", "edge"],
        cwd=REPO, stdout=subprocess.PIPE, text=True,
    )
    try:
        edge_port = int(edge.stdout.readline().split()[1])
        router = Stack(loop, tmp_path, edge_port, tiers["cloud"][0].port)
        done = []
        lock = threading.Lock()

        def one(i):
            if i == 1000:
                edge.kill()
            with lock:
                done.append(i)
            try:
                return one.client.complete("an easy one" if i % 2 else "a tricky one", timeout_s=10).tier
            except Exception as exc:  # noqa: BLE001 - counted below, must carry a status
                return exc

        with router.client(retry=RetryPolicy(attempts=1)) as client:
            one.client = client
            with ThreadPoolExecutor(32) as pool:
                results = list(pool.map(one, range(2000)))
        router.stop()
        errors = [r for r in results if not isinstance(r, str)]
        assert all(getattr(e, "code", None) in {grpc.StatusCode.UNAVAILABLE} for e in errors), errors[:3]
        assert len(errors) == 0, f"{len(errors)} failed though the cloud tier was up"
        assert {"edge", "cloud"} <= set(results)
        assert set(results[1100:]) == {"cloud"}  # once the edge is dead, the cloud answers everything
        assert len(router.rows()) == 2000
    finally:
        edge.kill()
        edge.wait()


def test_response_cache_answers_repeats_without_calling_tiers(loop, tiers, tmp_path):
    router = Stack(loop, tmp_path, tiers["edge"][0].port, tiers["cloud"][0].port,
                   cache={"enabled": True, "ttl_s": 60, "max_entries": 10})
    try:
        with router.client() as client:
            first = client.complete("a tricky cached one", max_tokens=4)
            calls = tiers["edge"][1].calls + tiers["cloud"][1].calls
            again = client.complete("a tricky cached one", max_tokens=4)
            assert tiers["edge"][1].calls + tiers["cloud"][1].calls == calls
            assert (again.text, again.tier, again.cost) == (first.text, "cloud", 0.0)
            assert again.trace.attempts[0].reason == "response cache hit"
            client.complete("a tricky cached one", max_tokens=5)  # other parameters: a miss
            assert tiers["edge"][1].calls + tiers["cloud"][1].calls > calls
            sampled = [client.complete("an easy one", temperature=0.7) for _ in range(2)]  # no seed: never cached
            assert all(s.trace.attempts[0].reason != "response cache hit" for s in sampled)
    finally:
        router.stop()


def test_router_metrics(loop, tiers, tmp_path):
    from tierlm.router.serve.server import RouterService  # noqa: F401 - metrics register on import

    router = Stack(loop, tmp_path, tiers["edge"][0].port, tiers["cloud"][0].port)
    try:
        with router.client() as client:
            client.complete("a tricky one")
        from prometheus_client import REGISTRY, generate_latest

        text = generate_latest(REGISTRY).decode()
        assert 'tierlm_router_escalations_total{from_tier="edge",to_tier="cloud"}' in text
        assert 'tierlm_router_answers_total{tier="cloud"}' in text
        assert "tierlm_router_scorer_seconds_count" in text
        assert 'tierlm_router_tier_seconds_count{ok="true",tier="edge"}' in text
        assert 'tierlm_router_tenant_cost_usd_total{tenant="acme"}' in text
        assert 'tierlm_router_completion_tokens_total{tenant="acme",tier="cloud"}' in text
        assert 'tierlm_grpc_handled_total{code="OK",method="Complete",service="tierlm.v1.Router"}' in text
        assert 'tierlm_router_breaker_open{tier="edge"} 0.0' in text
    finally:
        router.stop()
