"""Refit from labelled live traffic, shadow test, promotion and rollback.

The traffic is synthetic but has a learnable structure: the edge is right exactly on queries
that say "easy", with the same (uninformative) confidence everywhere; the cloud is right on 80%
of queries. The live policy, with no learned scorer, cannot tell and escalates everything
(accuracy 0.8 at the price of both tiers); a refit that learns "easy" from feedback keeps easy
queries on the edge: more accurate *and* cheaper.
"""

from __future__ import annotations

import asyncio
import json
import random
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tierlm.config import load_policy
from tierlm.router.learn.cascade_eval import CascadePolicy
from tierlm.router.learn.scorer import Scorer
from tierlm.router.learn.traffic import SeenAnswer, details_json, policy_version
from tierlm.router.store import LedgerRow, Verdict
from tierlm.router.store.sqlite import SqliteStore
from tierlm.router.study.refit import labelled_requests, promote, refit, rollback, shadow_test

REPO = Path(__file__).resolve().parents[2]
EDGE_COST, CLOUD_COST = 0.001, 0.01


def write_live_policy(path: Path, **learning) -> None:
    path.write_text(yaml.safe_dump({
        "tiers": [
            {"name": "edge", "address": "127.0.0.1:1", "cost": {"per_call": EDGE_COST}},
            {"name": "cloud", "address": "127.0.0.1:2", "cost": {"per_call": CLOUD_COST}},
        ],
        "cascade": {"order": ["edge", "cloud"], "thresholds": {"edge": 0.7}},  # exp(-0.5) = 0.61: always escalates
        "learning": {"record": True, **learning},
    }))


async def fill(store: SqliteStore, version: str, n: int = 240, seed: int = 0) -> None:
    """``n`` recorded, explored and labelled requests, one second apart."""
    rng = random.Random(seed)
    for i in range(n):
        easy = i % 2 == 0
        query = f"{'easy' if easy else 'hard'} question number {i} about {rng.choice(['cats', 'ships', 'rain'])}"
        edge = SeenAnswer("edge", "right" if easy else "edge guess", EDGE_COST, (-0.5,), None, 0.61)
        cloud = SeenAnswer("cloud", "right" if rng.random() < 0.8 else "cloud guess", CLOUD_COST, (-0.5,), None, None)
        details = details_json(query, "cloud", [edge, cloud], version, explore=True)
        await store.finish(LedgerRow(f"r{i}", "acme", ["edge", "cloud"], "cloud", 5, 2, EDGE_COST + CLOUD_COST, 1.0, "OK",
                                     ts=1_000_000.0 + i, details=details), None)
        await store.give_feedback(f"r{i}", "acme", Verdict(reference="right"))


@pytest.fixture
def traffic(tmp_path):
    policy = tmp_path / "policy.yaml"
    write_live_policy(policy)
    ledger = tmp_path / "ledger.sqlite"

    async def build():
        store = SqliteStore(ledger)
        await fill(store, policy_version(policy))
        labelled = await store.labelled()
        await store.close()
        return labelled

    return policy, ledger, asyncio.run(build())


def test_refit_beats_a_blind_policy_and_a_bad_candidate_is_refused(traffic, hashing_encoder, tmp_path):
    policy, _, labelled = traffic
    result = refit(policy, labelled, hashing_encoder, tmp_path / "candidate.yaml")
    shadow = result.shadow
    assert result.fit_requests == 168 and shadow.requests == 72  # 70% fitted on, the later 30% held back
    assert shadow.live_accuracy == pytest.approx(0.8, abs=0.1)
    assert shadow.candidate_accuracy > shadow.live_accuracy and shadow.candidate_cost < shadow.live_cost
    assert shadow.promote and shadow.gain_ci95[0] <= shadow.gain <= shadow.gain_ci95[1]
    candidate = load_policy(tmp_path / "candidate.yaml")
    assert candidate.scorer is not None and candidate.cascade.order == ["edge", "cloud"]

    # A deliberately bad candidate (the edge's answer always accepted) on the same held-back
    # requests: cheaper, but far less accurate, so it is not promoted.
    live = load_policy(policy)
    requests = sorted(labelled_requests(labelled, live), key=lambda r: r.ts)[-72:]
    scorer = Scorer.load(candidate.scorer.path, hashing_encoder)
    bad = shadow_test(live, CascadePolicy(("edge", "cloud"), {"edge": 0.0}), None, scorer, requests, ["edge", "cloud"])
    assert bad.candidate_cost < bad.live_cost and bad.candidate_accuracy < bad.live_accuracy - 0.2
    assert not bad.promote
    # Nor is one as accurate as the live policy but dearer: against a cloud-only live policy,
    # a candidate that calls the edge first and always escalates.
    cloud_only = live.model_copy(update={"cascade": live.cascade.model_copy(update={"order": ["cloud"], "thresholds": {}})})
    dear = shadow_test(cloud_only, CascadePolicy(("edge", "cloud"), {"edge": 1.01}), None, scorer, requests, ["edge", "cloud"])
    assert dear.candidate_accuracy == dear.live_accuracy and dear.candidate_cost > dear.live_cost and not dear.promote
    # A dearer candidate that is more accurate: refused at the live policy's cost, promoted where
    # the policy's refit budget allows what it spends (edge-only live, escalating candidate).
    edge_only = live.model_copy(update={"cascade": live.cascade.model_copy(update={"order": ["edge"], "thresholds": {}})})
    better = CascadePolicy(("edge", "cloud"), {"edge": 1.01})
    held = shadow_test(edge_only, better, None, scorer, requests, ["edge", "cloud"])
    assert held.candidate_accuracy > held.live_accuracy and held.candidate_cost > held.live_cost and not held.promote
    allowed = shadow_test(edge_only, better, None, scorer, requests, ["edge", "cloud"], budget=held.candidate_cost)
    assert allowed.promote
    short = shadow_test(edge_only, better, None, scorer, requests, ["edge", "cloud"], budget=held.candidate_cost * 0.9)
    assert not short.promote


def test_too_little_explored_traffic_is_a_clear_error(traffic, hashing_encoder, tmp_path):
    policy, _, labelled = traffic
    with pytest.raises(ValueError, match="10 explored, fully labelled requests; a refit needs at least 40"):
        refit(policy, labelled[:10], hashing_encoder, tmp_path / "candidate.yaml")


def test_promote_keeps_history_and_rollback_restores(tmp_path):
    policy, candidate = tmp_path / "policy.yaml", tmp_path / "candidate.yaml"
    write_live_policy(policy)
    write_live_policy(candidate, refit_budget_per_query=0.5)
    before, new = policy.read_bytes(), candidate.read_bytes()
    kept = promote(policy, candidate)
    assert policy.read_bytes() == new and kept.read_bytes() == before
    assert rollback(policy) == kept and policy.read_bytes() == before and not kept.exists()
    with pytest.raises(ValueError, match="nothing to roll back to"):
        rollback(policy)


def tierlm(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tierlm.app.cli", "--log-level", "WARNING", *args],
                          cwd=REPO, capture_output=True, text=True, timeout=600)


def test_cli_refit_rejects_then_promotes_then_rolls_back(traffic, tmp_path):
    """Through `tierlm router refit --promote` and `rollback`, with the real MiniLM encoder;
    every decision lands in the store's decision log."""
    policy, ledger, _ = traffic
    write_live_policy(policy, refit_budget_per_query=EDGE_COST)  # a budget only the edge fits: a worse candidate
    bad_policy = policy.read_bytes()
    rejected = tierlm("router", "refit", "--policy", str(policy), "--store", str(ledger), "--promote", "--json")
    assert rejected.returncode == 0, rejected.stderr
    decision = json.loads(rejected.stdout)
    assert decision["action"] == "rejected" and decision["candidate_accuracy"] < decision["live_accuracy"]
    assert policy.read_bytes() == bad_policy

    write_live_policy(policy)  # the default budget: what the live policy spends
    live = policy.read_bytes()
    promoted = tierlm("router", "refit", "--policy", str(policy), "--store", str(ledger), "--promote")
    assert promoted.returncode == 0, promoted.stderr
    assert "promoted:" in promoted.stdout and "95% CI" in promoted.stdout
    assert load_policy(policy).scorer is not None

    rolled = tierlm("router", "rollback", "--policy", str(policy), "--store", str(ledger))
    assert rolled.returncode == 0, rolled.stderr
    assert policy.read_bytes() == live

    async def decisions():
        import sqlite3

        with sqlite3.connect(ledger) as db:
            return [row[0] for row in db.execute("SELECT action FROM policy_decisions ORDER BY id")]

    assert asyncio.run(decisions()) == ["refit-rejected", "refit-promoted", "rollback"]
