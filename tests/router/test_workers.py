"""`tierlm router serve --workers 2`: two router processes on one port sharing one SQLite store.

A real supervisor and real workers on 127.0.0.1, scripted tiers, and many client connections (the
kernel spreads connections, not calls, across the workers)."""

from __future__ import annotations

import signal
import sqlite3
import time
from concurrent.futures import ThreadPoolExecutor

import grpc
import pytest
import yaml

from tests.support.aio import BackgroundLoop
from tests.support.echo_server import ControlledGenerator, start_generator
from tests.support.router_process import RouterProcess
from tierlm.auth import hash_key
from tierlm.serving import ServerConfig
from tierlm.v1 import generator_pb2, router_pb2, router_pb2_grpc

pytestmark = pytest.mark.slow  # a supervisor and two workers per test: ~15-30 s

KEY = "acme-key"


@pytest.fixture
def tiers():
    loop = BackgroundLoop()
    generators = {"edge": ControlledGenerator(name="edge"), "cloud": ControlledGenerator(name="cloud")}
    servers = {name: loop.run(start_generator(ServerConfig(), g)) for name, g in generators.items()}
    yield {name: s.port for name, s in servers.items()}
    for server in servers.values():
        loop.run(server.stop(grace_s=0))
    loop.close()


@pytest.fixture
def policy(tmp_path, tiers):
    path = tmp_path / "policy.yaml"
    path.write_text(yaml.safe_dump({
        "tiers": [{"name": name, "address": f"127.0.0.1:{port}", "cost": {"per_call": 0.001 if name == "edge" else 0.01}}
                  for name, port in tiers.items()],
        "cascade": {"order": ["edge", "cloud"], "thresholds": {"edge": 0.5}},
        "tenants": {"acme": {"key_sha256": hash_key(KEY), "budget_per_day": 100.0}},
    }))
    return path


def send(address: str, connections: int, per_connection: int, prefix: str) -> list[str]:
    """Requests over ``connections`` separate connections; the request ids answered. (Channels
    in one process share one connection unless told otherwise, and the kernel spreads
    connections, not calls, across the workers.)"""

    def one_connection(c: int) -> list[str]:
        with grpc.insecure_channel(address, options=[("grpc.use_local_subchannel_pool", 1)]) as channel:
            stub = router_pb2_grpc.RouterStub(channel)
            return [stub.Complete(router_pb2.CompleteRequest(request=generator_pb2.GenerateRequest(
                        prompt="easy" if i % 2 else "unsure", max_tokens=2, request_id=f"{prefix}{c}-{i}")),
                        metadata=(("x-api-key", KEY),), timeout=20.0).answer.request_id
                    for i in range(per_connection)]

    with ThreadPoolExecutor(8) as pool:
        return [rid for ids in pool.map(one_connection, range(connections)) for rid in ids]


def books(path) -> tuple[float, float, float]:
    """(spent, held on the budget books, cost in the ledger) of the store at ``path``."""
    with sqlite3.connect(path) as db:
        spent, held = db.execute("SELECT COALESCE(SUM(spent), 0), COALESCE(SUM(held), 0) FROM budget_books").fetchone()
        (ledgered,) = db.execute("SELECT COALESCE(SUM(cost), 0) FROM requests").fetchone()
    return spent, held, ledgered


def test_two_workers_share_one_port_and_one_consistent_ledger(tmp_path, policy):
    store = tmp_path / "ledger.sqlite"
    with RouterProcess(policy, store, "--workers", "2") as router:
        answered = send(router.address, connections=16, per_connection=6, prefix="w")
        rows = router.rows()
        writers = {row.router for row in rows}
    assert len(answered) == 96 and sorted(row.request_id for row in rows) == sorted(answered)  # one row each
    assert all(row.outcome == "OK" for row in rows)
    assert len(writers) == 2, f"one port, two workers, both serve: rows written by {writers}"
    assert all(worker.split(":")[-1].isdigit() for worker in writers)
    spent, held, ledgered = books(store)
    assert held == pytest.approx(0.0, abs=1e-12) and spent == pytest.approx(ledgered) and ledgered > 0


def workers_of(supervisor: int) -> list:
    """The supervisor's live worker processes (not multiprocessing's resource tracker)."""
    import psutil

    found = []
    for child in psutil.Process(supervisor).children():
        try:
            if "spawn_main" in " ".join(child.cmdline()):
                found.append(child)
        except (psutil.ZombieProcess, psutil.NoSuchProcess):  # a worker that died, not yet reaped
            continue
    return found


def test_a_killed_worker_is_started_again_and_the_port_keeps_serving(tmp_path, policy):
    with RouterProcess(policy, tmp_path / "ledger.sqlite", "--workers", "2") as router:
        send(router.address, connections=4, per_connection=1, prefix="warm")
        workers = workers_of(router.process.pid)
        assert len(workers) == 2
        time.sleep(10.5)  # past the supervisor's minimum uptime: a crash then is restarted, not fatal
        workers[0].send_signal(signal.SIGKILL)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            alive = workers_of(router.process.pid)
            if len(alive) == 2 and workers[0].pid not in {p.pid for p in alive}:
                break
            time.sleep(0.5)
        else:
            pytest.fail(f"no replacement worker: {router.stop()[-2000:]}")
        assert len(send(router.address, connections=8, per_connection=2, prefix="after")) == 16
        assert router.alive()
        log = router.stop()
    assert "starting it again" in log
