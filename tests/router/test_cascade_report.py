"""The routing table: cascades chosen on one split, measured on another."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tierlm.router.learn.cascade_eval import CascadeData, CascadePolicy, TierOutcomes, evaluate_cascade
from tierlm.router.study.cascade_report import bootstrap_interval, frontier_on, routing_rows
from tierlm.router.learn.optimizer import InfeasibleBudgetError, fit_frontier


def split(seed: int, n: int = 200) -> CascadeData:
    rng = np.random.default_rng(seed)
    tiers = {}
    for name, accuracy, cost in (("edge", 0.6, 1.0), ("cloud", 0.8, 10.0)):
        correct = rng.random(n) < accuracy
        tiers[name] = TierOutcomes(correct, np.clip(0.4 * correct + rng.random(n) * 0.6, 0, 1), np.full(n, cost),
                                   fail_prob=np.clip(0.5 * ~correct + rng.random(n) * 0.5, 0, 1))
    return CascadeData(tiers)


def test_rows_measure_train_fitted_cascades_on_the_test_split() -> None:
    train, dev = split(0), split(1)
    plain, routed = fit_frontier(train), fit_frontier(train, prerouting=True)
    rows = routing_rows(dev, [2.0, 5.0], {"cascade": plain, "cascade-preroute": routed})
    by_name = {r["name"]: r for r in rows}
    assert list(by_name) == ["edge-only", "cloud-only", "oracle", "cascade@2", "cascade@5",
                             "cascade-preroute@2", "cascade-preroute@5"]
    assert by_name["cloud-only"]["cost_per_query"] == 10.0
    for prefix, frontier in (("cascade", plain), ("cascade-preroute", routed)):
        for budget in (2.0, 5.0):
            row = by_name[f"{prefix}@{budget:g}"]
            point = frontier.best_within(budget)
            assert (row["fit_accuracy"], row["fit_cost_per_query"]) == (point.accuracy, point.cost_per_query)
            assert row["fit_cost_per_query"] <= budget
            policy = CascadePolicy.from_policy_section(row["policy"])
            assert policy == point.policy
            on_dev = evaluate_cascade(dev, policy)
            assert (row["accuracy"], row["cost_per_query"]) == (on_dev.accuracy, on_dev.cost_per_query)
            gain = row["gain_vs_best_single"]
            assert gain["tier"] == "cloud"  # the more accurate tier on dev
            assert gain["accuracy"] == pytest.approx(row["accuracy"] - by_name["cloud-only"]["accuracy"])
            assert gain["ci95"][0] <= gain["accuracy"] <= gain["ci95"][1]
            assert gain["cost_ratio"] == pytest.approx(row["cost_per_query"] / 10.0)
    for row in rows:
        low, high = row["accuracy_ci95"]
        assert 0 <= low <= row["accuracy"] <= high <= 1 and high - low < 0.2  # n = 200
    json.dumps(rows)  # plain JSON types only


def test_bootstrap_interval_covers_the_binomial_spread() -> None:
    """For 1,000 coin flips at p = 0.8 the 95% interval is about +-1.96 * sqrt(0.16 / 1000) = +-2.5 points."""
    values = np.random.default_rng(0).random(1000) < 0.8
    low, high = bootstrap_interval(values)
    assert low < values.mean() < high
    assert 0.04 < high - low < 0.06


def test_infeasible_budget_is_an_error() -> None:
    with pytest.raises(InfeasibleBudgetError):
        routing_rows(split(1), [0.5], {"cascade": fit_frontier(split(0))})


def test_frontier_on_evaluates_every_frontier_cascade() -> None:
    train, dev = split(0), split(1)
    frontier = fit_frontier(train)
    results = frontier_on(frontier, dev)
    assert len(results) == len(frontier.points)
    assert results[0] == evaluate_cascade(dev, frontier.points[0].policy)
