"""Router replicas sharing one real PostgreSQL: budgets that hold across them, nothing lost or
doubled when one is killed, and clear failures while the database is down.

Real router processes (`tierlm router serve --store <dsn>`) on 127.0.0.1, scripted tiers, and the
SDK spreading calls round-robin over every replica.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import psycopg
import pytest
import yaml

from tests.support.aio import BackgroundLoop
from tests.support.echo_server import ControlledGenerator, start_generator
from tests.support.router_process import RouterProcess
from tierlm.auth import hash_key
from tierlm.client import Client, ResourceExhausted, RetryPolicy, TierlmError, Unauthenticated
from tierlm.serving import ServerConfig

pytestmark = pytest.mark.slow  # three router processes per test: ~20-40 s each

KEY = "acme-key"


@pytest.fixture
def tiers():
    loop = BackgroundLoop()
    generators = {"edge": ControlledGenerator(name="edge"), "cloud": ControlledGenerator(delay_s=0.05, name="cloud")}
    servers = {name: loop.run(start_generator(ServerConfig(), g)) for name, g in generators.items()}
    yield {name: s.port for name, s in servers.items()}
    for server in servers.values():
        loop.run(server.stop(grace_s=0))
    loop.close()


def write_policy(path: Path, ports: dict[str, int], budget_per_day: float | None = None, **limits) -> Path:
    tenant = {"key_sha256": hash_key(KEY)} | ({"budget_per_day": budget_per_day} if budget_per_day else {})
    path.write_text(yaml.safe_dump({
        "tiers": [
            {"name": "edge", "address": f"127.0.0.1:{ports['edge']}", "cost": {"per_call": 0.001}, "timeout_s": 2.0},
            {"name": "cloud", "address": f"127.0.0.1:{ports['cloud']}", "cost": {"per_call": 0.01, "per_output_token": 0.001},
             "timeout_s": 3.0},
        ],
        "cascade": {"order": ["edge", "cloud"], "thresholds": {"edge": 0.5}},
        "tenants": {"acme": tenant},
        "limits": limits,
    }))
    return path


def replicas(policy: Path, dsn: str, count: int = 3) -> list[RouterProcess]:
    return [RouterProcess(policy, dsn) for _ in range(count)]


def send(addresses: list[str], count: int, prefix: str, **params) -> dict[str, object]:
    """``count`` calls from 16 threads through one round-robin SDK client: request id -> outcome."""
    outcomes: dict[str, object] = {}
    with Client(addresses, api_key=KEY, timeout_s=20.0, retry=RetryPolicy(attempts=6, max_backoff_s=1.0)) as client:

        def one(i: int) -> None:
            rid = f"{prefix}{i}"
            try:
                outcomes[rid] = client.complete("unsure words", max_tokens=3, request_id=rid, **params)
            except TierlmError as exc:
                outcomes[rid] = exc

        with ThreadPoolExecutor(16) as pool:
            list(pool.map(one, range(count)))
    return outcomes


def holds(dsn: str) -> tuple[int, float]:
    """(reservations still held, held total on the books)."""
    with psycopg.connect(dsn) as conn:
        (held_rows,) = conn.execute("SELECT count(*) FROM reservations WHERE state = 'held'").fetchone()
        (held,) = conn.execute("SELECT COALESCE(sum(held), 0) FROM budget_books").fetchone()
    return held_rows, held


def test_three_replicas_hold_one_daily_budget(tmp_path, tiers, postgres_dsn):
    routers = replicas(write_policy(tmp_path / "p.yaml", tiers, budget_per_day=0.5), postgres_dsn)
    try:
        outcomes = send([r.address for r in routers], 64, "b")
        rows = routers[0].rows()
    finally:
        for router in routers:
            router.stop()
    refused = [o for o in outcomes.values() if isinstance(o, ResourceExhausted)]
    answered = [o for o in outcomes.values() if not isinstance(o, TierlmError)]
    assert refused and answered and len(refused) + len(answered) == 64
    assert all("over budget_per_day 0.5" in str(o) for o in refused)  # the refusal names the budget
    assert sorted(r.request_id for r in rows) == sorted(outcomes)  # exactly one row per request
    assert sum(r.cost for r in rows) <= 0.5 + 1e-9
    assert len({r.router for r in rows}) == 3  # the SDK spread the calls over every replica
    assert holds(postgres_dsn) == (0, pytest.approx(0.0, abs=1e-9))


def test_a_replica_killed_under_load_loses_and_doubles_nothing(tmp_path, tiers, postgres_dsn):
    routers = replicas(write_policy(tmp_path / "p.yaml", tiers, budget_per_day=1.0, lease_margin_s=1.0), postgres_dsn)
    try:
        with ThreadPoolExecutor(1) as background:
            load = background.submit(send, [r.address for r in routers], 120, "k")
            time.sleep(1.0)  # requests are in flight on every replica
            os.kill(routers[0].process.pid, signal.SIGKILL)
            outcomes = load.result(timeout=180)
        time.sleep(8.0)  # the longest lease (2 + 3 + 1 s) and a sweep
        rows = routers[1].rows()
        left = holds(postgres_dsn)
    finally:
        for router in routers:
            router.stop()
    failed = {rid: o for rid, o in outcomes.items() if isinstance(o, TierlmError) and not isinstance(o, ResourceExhausted)}
    assert not failed, f"the SDK's retries should have reached a live replica: {list(failed.items())[:3]}"
    assert any(isinstance(o, ResourceExhausted) for o in outcomes.values())  # the budget ran out during the load too
    assert sum(r.cost for r in rows) <= 1.0 + 1e-9
    killed = f"{routers[0].process.pid}"
    assert any(r.router.endswith(f":{killed}") for r in rows)  # it had answered some before it died
    ids = [r.request_id for r in rows]
    assert len(ids) == len(set(ids)) == 120 and set(ids) == set(outcomes)
    assert left == (0, pytest.approx(0.0, abs=1e-9))  # the dead replica's holds were taken over or expired


def test_a_refusal_is_ledgered_before_the_client_hears_it(tmp_path, tiers, postgres_dsn):
    # A budget below one request's worst case refuses every call. The ledger is locked while
    # the call runs, and the replica dies the moment the caller hears the refusal: its row
    # must already be written, not left to work the dead replica can no longer do.
    (router,) = replicas(write_policy(tmp_path / "p.yaml", tiers, budget_per_day=0.005), postgres_dsn, count=1)
    heard_while_locked = threading.Event()
    locked = threading.Event()

    def refused_then_killed() -> TierlmError | None:
        with Client(router.address, api_key=KEY, retry=RetryPolicy(attempts=1)) as client:
            try:
                client.complete("unsure words", max_tokens=3, request_id="refused")
            except TierlmError as exc:
                if locked.is_set():
                    heard_while_locked.set()
                os.kill(router.process.pid, signal.SIGKILL)
                return exc
        return None

    try:
        with psycopg.connect(postgres_dsn) as conn, ThreadPoolExecutor(1) as background:
            with conn.transaction():
                conn.execute("LOCK TABLE ledger IN EXCLUSIVE MODE")  # reads pass, the row's INSERT waits
                locked.set()
                outcome = background.submit(refused_then_killed)
                time.sleep(1.5)
                locked.clear()
            refusal = outcome.result(timeout=30)
        router.process.wait(timeout=10)
        rows = router.rows()
    finally:
        router.stop()
    assert isinstance(refusal, ResourceExhausted)
    assert not heard_while_locked.is_set(), "the refusal reached the caller before its ledger row was written"
    assert [(r.request_id, r.outcome) for r in rows] == [("refused", "RESOURCE_EXHAUSTED")]


def test_postgres_down_fails_clearly_and_the_replicas_recover(tmp_path, tiers, postgres_server, postgres_dsn):
    routers = replicas(write_policy(tmp_path / "p.yaml", tiers, budget_per_day=100.0), postgres_dsn, count=2)
    addresses = [r.address for r in routers]
    try:
        assert not any(isinstance(o, TierlmError) for o in send(addresses, 8, "before").values())
        postgres_server.stop()
        started = time.monotonic()
        with Client(addresses, api_key=KEY, timeout_s=30.0, retry=RetryPolicy(attempts=1)) as client:
            with pytest.raises(TierlmError) as error:
                client.complete("unsure words", max_tokens=3, request_id="during")
        assert error.value.code == grpc.StatusCode.UNAVAILABLE and "budget store is unavailable" in str(error.value)
        assert time.monotonic() - started < 15  # never a hang
        postgres_server.start()
        deadline = time.monotonic() + 30
        while True:  # the routers reconnect on their own, no restart
            outcomes = send(addresses, 4, f"after{int(time.monotonic())}-")
            if not any(isinstance(o, TierlmError) for o in outcomes.values()):
                break
            assert time.monotonic() < deadline, list(outcomes.values())[:2]
            time.sleep(0.5)
        rows = routers[0].rows()
    finally:
        for router in routers:
            router.stop()
    answered_ids = {r.request_id for r in rows if r.outcome == "OK"}
    assert {f"before{i}" for i in range(8)} <= answered_ids and "during" not in answered_ids


def test_a_refused_key_is_booked_to_the_tenant_it_names(tmp_path, tiers, postgres_dsn):
    (router,) = replicas(write_policy(tmp_path / "p.yaml", tiers), postgres_dsn, count=1)
    try:
        with Client(router.address, api_key="leaked-or-rotated") as client:
            with pytest.raises(Unauthenticated):
                client.complete("hi", tenant="acme", request_id="stale-key")
            with pytest.raises(Unauthenticated):
                client.complete("hi", tenant="nobody-we-know", request_id="probe")
        time.sleep(1.0)
        rows = {r.request_id: r for r in router.rows()}
    finally:
        router.stop()
    assert rows["stale-key"].tenant == "acme" and rows["stale-key"].outcome == "UNAUTHENTICATED"
    assert "probe" not in rows  # unknown tenants are only counted (a metric), never ledgered
