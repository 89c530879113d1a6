"""The routing table: cascades fitted on one split, evaluated on another, next to every single
tier and the oracle. Rows follow the bench result shape of tierlm/results.py (``<tier>-only``,
``oracle``, ``cascade@<budget>``), so ``bench/results/routing.json`` and ``tierlm eval
cascade`` print the same thing.

Noise: every row carries a 95% bootstrap interval of its accuracy over the evaluated queries,
and every cascade row its paired gain over the most accurate single tier on the same queries
(also with a 95% bootstrap interval): two rows a point apart at n = 1,000 are usually a tie."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from tierlm.router.learn.cascade_eval import (
    CascadeData,
    CascadePolicy,
    CascadeResult,
    evaluate_cascade,
    evaluate_oracle,
    evaluate_single_tiers,
)
from tierlm.router.learn.optimizer import Frontier

__all__ = ["BOOTSTRAP_RESAMPLES", "bootstrap_interval", "frontier_on", "policy_row", "routing_rows"]

BOOTSTRAP_RESAMPLES = 2000


def bootstrap_interval(values: np.ndarray, level: float = 0.95, seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of ``values`` (queries resampled with replacement)."""
    values = np.asarray(values, dtype=np.float64)
    rng = np.random.default_rng(seed)
    means = values[rng.integers(0, len(values), size=(BOOTSTRAP_RESAMPLES, len(values)))].mean(axis=1)
    tail = (1.0 - level) / 2.0
    return float(np.quantile(means, tail)), float(np.quantile(means, 1.0 - tail))


def _row(name: str, result: CascadeResult) -> dict[str, Any]:
    row = {
        "name": name,
        "accuracy": result.accuracy,
        "cost_per_query": result.cost_per_query,
        "answered": dict(result.answered),
        "called": dict(result.called),
    }
    if result.correct is not None:
        row["accuracy_ci95"] = list(bootstrap_interval(result.correct))
    return row


def _gain(result: CascadeResult, best: tuple[str, CascadeResult]) -> dict[str, Any]:
    """Paired accuracy gain of ``result`` over the best single tier, same queries."""
    name, single = best
    diff = result.correct.astype(np.float64) - single.correct.astype(np.float64)
    return {"tier": name, "accuracy": float(diff.mean()), "ci95": list(bootstrap_interval(diff)),
            "cost_ratio": result.cost_per_query / single.cost_per_query if single.cost_per_query else None}


def _cascade_row(
    name: str, policy: CascadePolicy, test: CascadeData, best: tuple[str, CascadeResult], fit_accuracy: float,
    fit_cost: float, budget: float | None,
) -> dict[str, Any]:
    result = evaluate_cascade(test, policy)
    row = _row(name, result)
    row["gain_vs_best_single"] = _gain(result, best)
    if budget is not None:
        row["budget_per_query"] = float(budget)
    row["fit_accuracy"] = fit_accuracy
    row["fit_cost_per_query"] = fit_cost
    row["policy"] = policy.to_policy_section(budget or 0.0)["cascade"]
    if budget is None:
        del row["policy"]["budget_per_query"]
    return row


def _cascade_rows(
    prefix: str, frontier: Frontier, test: CascadeData, budgets: Sequence[float], best: tuple[str, CascadeResult]
) -> list[dict[str, Any]]:
    points = [(budget, frontier.best_within(budget)) for budget in budgets]
    return [
        _cascade_row(f"{prefix}@{budget:g}", point.policy, test, best, point.accuracy, point.cost_per_query, budget)
        for budget, point in points
    ]


def _best_single(test: CascadeData, among: Sequence[str] | None) -> tuple[str, CascadeResult]:
    singles = evaluate_single_tiers(test)
    return max(((n, r) for n, r in singles.items() if among is None or n in among), key=lambda item: item[1].accuracy)


def policy_row(
    name: str, policy: CascadePolicy, fit: CascadeData, test: CascadeData, compare_to: Sequence[str] | None = None
) -> dict[str, Any]:
    """One given cascade (a policy file's) measured on ``test``, beside what it did on the split
    it was fitted on (``fit``), with its paired gain over the best of ``compare_to`` (default:
    every tier) alone."""
    fitted = evaluate_cascade(fit, policy)
    return _cascade_row(name, policy, test, _best_single(test, compare_to), fitted.accuracy, fitted.cost_per_query, None)


def routing_rows(
    test: CascadeData, budgets: Sequence[float], frontiers: Mapping[str, Frontier], compare_to: Sequence[str] | None = None
) -> list[dict[str, Any]]:
    """Rows for each tier alone, the oracle, and per frontier and budget the best cascade
    within the budget; every number is measured on ``test``.

    ``frontiers`` maps a row prefix to a frontier fitted on another split (never on
    ``test``), e.g. ``{"cascade": fit_frontier(train), "cascade-preroute":
    fit_frontier(train, prerouting=True)}``: rows ``cascade@<budget>`` and
    ``cascade-preroute@<budget>`` then show whether pre-routing helps. Each row has
    ``accuracy``, ``cost_per_query`` and the per-tier ``answered`` and ``called`` shares;
    cascade rows add ``budget_per_query``, the numbers on the fitted split and the ``policy``
    (the policy file's ``cascade`` section) and ``gain_vs_best_single`` (paired accuracy gain over
    the most accurate single tier of ``compare_to`` (default: all) on ``test``, its 95% interval
    and the cost ratio). A budget
    below a frontier's cheapest cascade raises
    :class:`~tierlm.router.learn.optimizer.InfeasibleBudgetError`.
    """
    singles = evaluate_single_tiers(test)
    rows = [_row(f"{name}-only", r) for name, r in singles.items()]
    rows.append(_row("oracle", evaluate_oracle(test)))
    best = _best_single(test, compare_to)
    for prefix, frontier in frontiers.items():
        rows += _cascade_rows(prefix, frontier, test, budgets, best)
    return rows


def frontier_on(frontier: Frontier, test: CascadeData) -> list[CascadeResult]:
    """Every cascade of a fitted frontier evaluated on ``test`` (for the plot's curve; on a
    split it was not fitted on, the curve need not be monotone)."""
    return [evaluate_cascade(test, point.policy) for point in frontier.points]
