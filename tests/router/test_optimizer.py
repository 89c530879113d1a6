"""The optimizer against brute force over every cascade and threshold, on small random splits."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from tierlm.router.learn.cascade_eval import CascadeData, CascadePolicy, TierOutcomes, evaluate_cascade
from tierlm.router.learn.optimizer import COST_RTOL, InfeasibleBudgetError, fit_frontier, optimize


def random_split(seed: int, n: int = 9, tiers: int = 3, dyadic: bool = True, tied: bool = True) -> CascadeData:
    """With ``tied`` scores come from a 5-value set (many ties), else every score differs;
    with ``dyadic`` every cost is a multiple of 1/4, so all sums are exact and equal costs
    really are equal."""
    rng = np.random.default_rng(seed)
    out = {}
    for k in range(tiers):
        if dyadic:
            cost = rng.integers(0, 3, n) / 4 + k
        else:
            cost = rng.uniform(0, 1, n) * (k + 1) * 1e-5
        out[f"t{k}"] = TierOutcomes(
            correct=rng.random(n) < 0.3 + 0.2 * k,
            score=rng.choice([0.1, 0.3, 0.5, 0.7, 0.9], n) if tied else rng.random(n),
            cost=cost,
            fail_prob=rng.choice([0.0, 0.2, 0.4, 0.6, 0.8, 1.0], n),
        )
    return CascadeData(out)


def all_policies(data: CascadeData, max_depth: int, prerouting: bool):
    """Every cascade of the documented search space, enumerated naively."""
    for depth in range(1, max_depth + 1):
        for order in itertools.permutations(data.tiers, depth):
            thresholds = [np.unique(data.tiers[t].score) for t in order[:-1]]
            skips: list[float | None] = [None]
            if prerouting and depth >= 2:
                skips += list(np.unique(data.tiers[order[0]].fail_prob)[1:])  # not skip-all
            for combo in itertools.product(*thresholds):
                for phi in skips:
                    yield CascadePolicy(
                        order,
                        dict(zip(order[:-1], map(float, combo), strict=True)),
                        {} if phi is None else {order[0]: float(phi)},
                    )


def brute_points(data: CascadeData, max_depth: int, prerouting: bool) -> list[tuple[float, float]]:
    points = []
    for policy in all_policies(data, max_depth, prerouting):
        r = evaluate_cascade(data, policy)
        points.append((r.accuracy, r.cost_per_query))
    return points


def brute_best(points, budget):
    feasible = [p for p in points if p[1] <= budget * (1 + COST_RTOL)]
    if not feasible:
        return None
    acc = max(a for a, _ in feasible)
    return acc, min(c for a, c in feasible if a == acc)


def brute_frontier(points):
    """Pareto points (strictly better accuracy for strictly more cost), cheapest first."""
    best: dict[float, float] = {}
    for a, c in points:
        best[a] = min(c, best.get(a, np.inf))
    out = []
    for a in sorted(best, reverse=True):
        if not out or best[a] < out[-1][1]:
            out.append((a, best[a]))
    return out[::-1]


CASES = [
    (seed, depth, prerouting, dyadic)
    for seed in range(4)
    for depth in (1, 2, 3)
    for prerouting in (False, True)
    for dyadic in (True, False)
    if not (depth == 1 and prerouting)
]


@pytest.mark.parametrize(("seed", "depth", "prerouting", "dyadic"), CASES)
def test_frontier_matches_brute_force(seed: int, depth: int, prerouting: bool, dyadic: bool) -> None:
    check_against_brute_force(random_split(seed, dyadic=dyadic), depth, prerouting)


def test_frontier_matches_brute_force_with_distinct_scores() -> None:
    # Every score differs, so many threshold cuts are pruned as dominated and several rows
    # fall into each block: the exact claim must survive both.
    check_against_brute_force(random_split(11, n=16, dyadic=False, tied=False), 3, True, block_rows=4)


def check_against_brute_force(data: CascadeData, depth: int, prerouting: bool, block_rows: int = 256) -> None:
    points = brute_points(data, depth, prerouting)
    # A large grid makes depth-3 pre-routing exhaustive on 6 distinct fail probabilities.
    frontier = fit_frontier(data, max_depth=depth, prerouting=prerouting, preroute_grid=64, block_rows=block_rows)

    for point in frontier.points:
        # Ties go to the simpler cascade: a stage accepting every query (threshold at the
        # tier's lowest score, nothing skipped) ends the cascade there, so the same numbers
        # come from the shorter cascade, which must be the one kept.
        order, skip = point.policy.order, point.policy.skip_thresholds
        for tier in order[:-1]:
            if not skip or tier != order[0]:
                assert point.policy.thresholds[tier] > data.tiers[tier].score.min()

    got = [(p.accuracy, p.cost_per_query) for p in frontier.points]
    want = brute_frontier(points)
    assert [a for a, _ in got] == [a for a, _ in want]
    np.testing.assert_allclose([c for _, c in got], [c for _, c in want], rtol=1e-12)

    # Every achievable cost (at most 100 of them, evenly spread), the midpoints between them
    # and one above all: each is a budget some cascade meets exactly, or just misses.
    costs = sorted({c for _, c in points})
    costs = [costs[i] for i in np.unique(np.linspace(0, len(costs) - 1, 100).astype(int))]
    budgets = costs + [costs[-1] * 2] + [(x + y) / 2 for x, y in itertools.pairwise(costs)]
    for budget in budgets:
        want_best = brute_best(points, budget)
        chosen = frontier.best_within(budget)
        assert chosen.accuracy == want_best[0]
        assert chosen.cost_per_query == pytest.approx(want_best[1], rel=1e-9)
        # The claimed numbers are what the policy really does, and it keeps the budget.
        real = evaluate_cascade(data, chosen.policy)
        assert real.accuracy == chosen.accuracy
        assert real.cost_per_query == pytest.approx(chosen.cost_per_query, rel=1e-9)
        assert real.cost_per_query <= budget * (1 + COST_RTOL)
        assert len(chosen.policy.order) <= depth
        assert not chosen.policy.skip_thresholds or prerouting


@pytest.mark.parametrize("seed", range(3))
def test_frontier_is_monotone_and_budget_curve_non_decreasing(seed: int) -> None:
    data = random_split(seed, n=60, tiers=3, dyadic=False)
    frontier = fit_frontier(data, prerouting=True)
    costs = np.array([p.cost_per_query for p in frontier.points])
    accs = np.array([p.accuracy for p in frontier.points])
    assert (np.diff(costs) > 0).all() and (np.diff(accs) > 0).all()
    budgets = np.linspace(0, costs[-1] * 1.2, 200)
    curve = frontier.accuracy_at(budgets)
    feasible = ~np.isnan(curve)
    assert (np.diff(curve[feasible]) >= 0).all()
    assert np.isnan(curve[budgets < costs[0] * (1 - 1e-6)]).all()


def test_infeasible_budget_raises_with_the_cheapest_policy() -> None:
    data = random_split(0)
    cheapest = fit_frontier(data).points[0]
    with pytest.raises(InfeasibleBudgetError) as info:
        optimize(data, cheapest.cost_per_query * 0.5)
    assert info.value.cheapest == cheapest
    assert "below the cheapest cascade" in str(info.value)


def test_depth_two_beats_single_tiers_on_a_known_case() -> None:
    # Cheap tier right exactly where its score is high; the expensive one always right.
    n = 100
    score = np.linspace(0, 1, n)
    data = CascadeData(
        {
            "edge": TierOutcomes(correct=score >= 0.6, score=score, cost=np.full(n, 1.0)),
            "cloud": TierOutcomes(correct=np.ones(n, bool), score=np.full(n, 0.5), cost=np.full(n, 10.0)),
        }
    )
    best = optimize(data, budget=10.0)
    assert best.policy.order == ("edge", "cloud")
    assert best.accuracy == 1.0
    # The optimum accepts exactly the scores >= the first correct one: 40 of 100 queries.
    assert best.policy.thresholds["edge"] == score[np.argmax(score >= 0.6)]
    assert best.cost_per_query == pytest.approx(1.0 + 0.6 * 10.0)
    assert best.policy.to_policy_section(10.0) == {
        "cascade": {"order": ["edge", "cloud"], "thresholds": {"edge": best.policy.thresholds["edge"]},
                    "budget_per_query": 10.0}
    }


def test_prerouting_saves_the_cost_of_a_tier_that_surely_fails() -> None:
    # The pre-router knows exactly which queries edge fails: skipping them saves their edge
    # cost at equal accuracy, which no plain cascade can.
    n = 40
    fails = np.arange(n) % 2 == 0
    data = CascadeData(
        {
            "edge": TierOutcomes(correct=~fails, score=np.full(n, 0.5), cost=np.full(n, 1.0),
                                 fail_prob=fails.astype(float)),
            "cloud": TierOutcomes(correct=np.ones(n, bool), score=np.full(n, 0.5), cost=np.full(n, 4.0)),
        }
    )
    plain = fit_frontier(data).best_within(100.0)
    routed = fit_frontier(data, prerouting=True).best_within(100.0)
    assert plain.accuracy == routed.accuracy == 1.0
    assert plain.cost_per_query == 4.0  # cloud alone
    assert routed.cost_per_query == pytest.approx(0.5 * 1.0 + 0.5 * 4.0)
    assert routed.policy.skip_thresholds == {"edge": 1.0}


def test_argument_errors() -> None:
    data = random_split(0)
    with pytest.raises(ValueError, match="max_depth"):
        fit_frontier(data, max_depth=4)
    with pytest.raises(ValueError, match="tiers"):
        fit_frontier(data, tiers=["t0", "nope"])
    only_two = fit_frontier(data, tiers=["t0", "t1"])
    assert all(set(p.policy.order) <= {"t0", "t1"} for p in only_two.points)


def test_blocks_do_not_change_the_result() -> None:
    data = random_split(5, n=50, dyadic=False)
    one = fit_frontier(data, prerouting=True, block_rows=1)
    many = fit_frontier(data, prerouting=True, block_rows=1000)
    assert one == many


def test_prerouting_without_fail_probabilities_changes_nothing() -> None:
    data = random_split(1, n=30, dyadic=False)
    stripped = CascadeData({name: TierOutcomes(t.correct, t.score, t.cost) for name, t in data.tiers.items()})
    assert fit_frontier(stripped, prerouting=True) == fit_frontier(stripped)


def test_coarse_preroute_grid_never_loses_to_plain_cascades() -> None:
    # With more distinct fail probabilities than grid points depth 3 pre-routing is a
    # search, not the optimum, but it only adds options: never worse at any budget.
    data = random_split(2, n=80, dyadic=False)
    data = CascadeData({
        name: TierOutcomes(t.correct, t.score, t.cost, fail_prob=np.random.default_rng(7).random(80))
        for name, t in data.tiers.items()
    })
    plain = fit_frontier(data)
    routed = fit_frontier(data, prerouting=True, preroute_grid=2)
    budgets = np.linspace(0, plain.points[-1].cost_per_query, 50)
    routed_acc = np.nan_to_num(routed.accuracy_at(budgets), nan=-1)
    assert (routed_acc >= np.nan_to_num(plain.accuracy_at(budgets), nan=-1)).all()
    for point in routed.points:
        real = evaluate_cascade(data, point.policy)
        assert (real.accuracy, real.cost_per_query) == (point.accuracy, pytest.approx(point.cost_per_query, rel=1e-9))
