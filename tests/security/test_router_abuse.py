"""The router as an attacker or a careless client uses it, against real router processes.

Billing of cut-short requests, a breaker whose probe is cancelled, budgets with tiers that
rewrite the prompt, hostile policy files, and requests the router must refuse itself.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import pytest
import yaml

from tests.support.echo_server import ControlledGenerator, start_generator
from tests.support.router_process import RouterProcess
from tierlm.auth import hash_key
from tierlm.client import Client, InvalidArgument, ResourceExhausted, RetryPolicy, TierlmError
from tierlm.serving import ServerConfig

KEY = "acme-key"
NO_RETRY = RetryPolicy(attempts=1)


@pytest.fixture
def tiers(loop):
    """Two real scripted Generator servers: `edge` (fast) and `cloud` (streams a word every 0.1 s)."""
    edge, cloud = ControlledGenerator(name="edge", slow_s=3.0), ControlledGenerator(delay_s=0.1, name="cloud")
    servers = {name: loop.run(start_generator(ServerConfig(), g)) for name, g in (("edge", edge), ("cloud", cloud))}
    yield {"edge": edge, "cloud": cloud, "ports": {name: s.port for name, s in servers.items()}}
    for server in servers.values():
        loop.run(server.stop(grace_s=0))


def policy(path: Path, ports: dict[str, int], *, edge: dict | None = None, cloud: dict | None = None, **extra) -> Path:
    document = {
        "tiers": [
            {"name": "edge", "address": f"127.0.0.1:{ports['edge']}", "cost": {"per_call": 0.001}, "timeout_s": 5.0, **(edge or {})},
            {"name": "cloud", "address": f"127.0.0.1:{ports['cloud']}", "cost": {"per_call": 0.01, "per_input_token": 1e-4,
             "per_output_token": 1e-3}, "timeout_s": 10.0, **(cloud or {})},
        ],
        "cascade": {"order": ["edge", "cloud"], "thresholds": {"edge": 0.5}},
        "tenants": {"acme": {"key_sha256": hash_key(KEY), **extra.pop("tenant", {})}},
        **extra,
    }
    path.write_text(yaml.safe_dump(document))
    return path


def test_streams_cut_by_the_client_are_billed_for_what_the_tier_did(tmp_path, tiers):
    with RouterProcess(policy(tmp_path / "p.yaml", tiers["ports"]), tmp_path / "ledger.sqlite") as router:
        prompt = " ".join(f"w{i}" for i in range(12))  # the cloud tier streams 12 words
        with Client(router.address, api_key=KEY) as client:
            complete = list(client.stream(prompt, max_tokens=16, force_tier="cloud", request_id="whole"))
            assert complete[-1].completion is not None
            stream = client.stream(prompt, max_tokens=16, force_tier="cloud", request_id="cut")
            for _ in zip(range(6), stream):
                pass
            stream.close()  # the client goes away after 6 of 12 chunks
        time.sleep(1.0)
    rows = {row.request_id: row for row in router.rows()}
    whole, cut = rows["whole"], rows["cut"]
    assert cut.outcome == "CANCELLED" and cut.tiers == ["cloud"]
    # Billed the call, the prompt it processed and the words it streamed: more than nothing,
    # less than the whole answer.
    assert 0.01 < cut.cost < whole.cost


def test_a_client_deadline_still_names_and_bills_the_tiers_called(tmp_path, tiers):
    with RouterProcess(policy(tmp_path / "p.yaml", tiers["ports"]), tmp_path / "ledger.sqlite") as router:
        with Client(router.address, api_key=KEY, retry=NO_RETRY) as client:
            with pytest.raises(TierlmError) as error:
                client.complete("edge-slow and unsure", max_tokens=4, timeout_s=1.0, request_id="late")
        assert error.value.code == grpc.StatusCode.DEADLINE_EXCEEDED
        time.sleep(1.0)
    (row,) = [r for r in router.rows() if r.request_id == "late"]
    assert row.tiers == ["edge"] and row.cost >= 0.001


def test_the_breaker_recovers_after_its_probe_is_cancelled(tmp_path, tiers):
    path = policy(tmp_path / "p.yaml", tiers["ports"], breaker={"failures_to_open": 1, "cooldown_s": 1.0})
    with RouterProcess(path, tmp_path / "ledger.sqlite") as router:
        with Client(router.address, api_key=KEY, retry=NO_RETRY) as client:
            assert client.complete("edge-fail", max_tokens=2).tier == "cloud"  # edge fails: its breaker opens
            assert "circuit breaker open" in client.complete("easy", max_tokens=2).trace.attempts[0].reason
            time.sleep(1.2)  # the cool-down passes: the next call is the probe
            with pytest.raises(TierlmError):
                client.complete("edge-slow", max_tokens=2, timeout_s=0.5)  # the probe is cut by the client
            answer = client.complete("easy", max_tokens=2)
        # A released probe lets the next call probe (and close the breaker); a stuck one would
        # send everything to the cloud until a restart.
        assert answer.tier == "edge"


def test_daily_budgets_hold_when_tiers_are_sent_rewritten_prompts(tmp_path, tiers):
    demos = tmp_path / "eight_shot.txt"
    demos.write_text("Answer.\n\n" + "".join(f"Q: {'long demonstration ' * 20}{i}\nA: up\n\n" for i in range(8)))
    prompt = {"selection": "fixed", "k": 8, "fixed_prompt": str(demos), "instruction": "Answer."}
    # Each call sends ~330 words (bytes+16 bounds the tokens): the client's 1-word prompt is nothing.
    path = policy(tmp_path / "p.yaml", tiers["ports"], edge={"prompt": prompt}, cloud={"prompt": prompt},
                  tenant={"budget_per_day": 0.5})
    with RouterProcess(path, tmp_path / "ledger.sqlite") as router:

        def ask(i: int) -> str:
            with Client(router.address, api_key=KEY, retry=NO_RETRY) as client:
                try:
                    return client.complete("unsure", max_tokens=4, force_tier="cloud", request_id=f"r{i}").tier
                except ResourceExhausted:
                    return "refused"

        with ThreadPoolExecutor(16) as pool:
            outcomes = list(pool.map(ask, range(64)))
        time.sleep(0.5)
    spent = sum(r.cost for r in router.rows())
    assert "refused" in outcomes and "cloud" in outcomes
    assert spent <= 0.5, f"the tenant spent {spent} of a 0.5 budget"


def test_a_per_query_budget_counts_the_rewritten_prompt(tmp_path, tiers):
    demos = tmp_path / "eight_shot.txt"
    demos.write_text("Answer.\n\n" + "".join(f"Q: {'long demonstration ' * 20}{i}\nA: up\n\n" for i in range(8)))
    prompt = {"selection": "fixed", "k": 8, "fixed_prompt": str(demos), "instruction": "Answer."}
    path = policy(tmp_path / "p.yaml", tiers["ports"], cloud={"prompt": prompt})
    with RouterProcess(path, tmp_path / "ledger.sqlite") as router:
        with Client(router.address, api_key=KEY, retry=NO_RETRY) as client:
            # The cloud's call costs 0.01 + ~335 prompt tokens x 1e-4: well over a 0.03 cap.
            answer = client.complete("unsure", max_tokens=2, budget_per_query=0.03)
    assert answer.tier == "edge" and answer.cost <= 0.03
    assert "over budget_per_query" in answer.trace.attempts[-1].reason


@pytest.mark.parametrize(
    "hostile",
    [
        "tiers: " + "[" * 20000 + "]" * 20000,  # nested deeper than any parser's recursion limit
        "# padding\n" * 600_000,  # a 6 MB file
        bytes(range(256)) * 64,  # binary garbage
    ],
    ids=["deeply-nested", "huge", "binary"],
)
def test_a_hostile_policy_file_never_stops_the_watcher(tmp_path, tiers, hostile):
    path = policy(tmp_path / "p.yaml", tiers["ports"])
    with RouterProcess(path, tmp_path / "ledger.sqlite") as router:
        good = path.read_bytes()
        path.write_bytes(hostile.encode() if isinstance(hostile, str) else hostile)
        time.sleep(2.5)  # the watcher sees the change and rejects it
        with Client(router.address, api_key=KEY) as client:
            assert client.complete("unsure", max_tokens=2).tier == "cloud"  # still serving the last good policy
            settings = yaml.safe_load(good)
            settings["cascade"]["thresholds"]["edge"] = 0.0  # accept every edge answer
            path.write_text(yaml.safe_dump(settings))
            deadline = time.monotonic() + 10
            while client.complete("unsure", max_tokens=2).tier != "edge":
                assert time.monotonic() < deadline, "the watcher died: a valid policy was never applied"
                time.sleep(0.3)
        assert router.alive()
    assert "policy reload rejected" in router.stop()


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"prompt": ""}, "no prompt"),
        ({"prompt": "   "}, "no prompt"),
        ({"prompt": "hi", "max_tokens": -5}, "max_tokens"),
        ({"prompt": "hi", "max_tokens": 2**31 - 1}, "max_tokens"),
        ({"prompt": "hi", "temperature": float("nan")}, "temperature"),
        ({"prompt": "hi", "budget_per_query": -1.0}, "budget_per_query"),
    ],
)
def test_bad_requests_are_refused_at_the_router(tmp_path, tiers, params, message):
    with RouterProcess(policy(tmp_path / "p.yaml", tiers["ports"]), tmp_path / "ledger.sqlite") as router:
        calls = len(tiers["edge"].prompts) + len(tiers["cloud"].prompts)
        with Client(router.address, api_key=KEY) as client:
            prompt = params.pop("prompt")
            with pytest.raises(InvalidArgument, match=message):
                client.complete(prompt, **params)
        assert len(tiers["edge"].prompts) + len(tiers["cloud"].prompts) == calls  # no tier saw it, nothing retried
        time.sleep(0.3)
    assert [r.outcome for r in router.rows()] == ["INVALID_ARGUMENT"]
