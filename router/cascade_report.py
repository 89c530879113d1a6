"""The routing table: cascades fitted on one split, evaluated on another, next to every single
tier and the oracle. Rows follow the bench result shape of DESIGN §7 (``<tier>-only``,
``oracle``, ``cascade@<budget>``), so ``bench/results/routing.json`` and ``tierlm eval
cascade`` print the same thing."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from tierlm.router.cascade_eval import (
    CascadeData,
    CascadeResult,
    evaluate_cascade,
    evaluate_oracle,
    evaluate_single_tiers,
)
from tierlm.router.optimizer import Frontier

__all__ = ["frontier_on", "routing_rows"]


def _row(name: str, result: CascadeResult) -> dict[str, Any]:
    return {
        "name": name,
        "accuracy": result.accuracy,
        "cost_per_query": result.cost_per_query,
        "answered": dict(result.answered),
        "called": dict(result.called),
    }


def _cascade_rows(
    prefix: str, frontier: Frontier, test: CascadeData, budgets: Sequence[float]
) -> list[dict[str, Any]]:
    rows = []
    for budget in budgets:
        point = frontier.best_within(budget)
        row = _row(f"{prefix}@{budget:g}", evaluate_cascade(test, point.policy))
        row["budget_per_query"] = float(budget)
        row["fit_accuracy"] = point.accuracy
        row["fit_cost_per_query"] = point.cost_per_query
        row["policy"] = point.policy.to_policy_section(budget)["cascade"]
        rows.append(row)
    return rows


def routing_rows(
    test: CascadeData, budgets: Sequence[float], frontiers: Mapping[str, Frontier]
) -> list[dict[str, Any]]:
    """Rows for each tier alone, the oracle, and per frontier and budget the best cascade
    within the budget; every number is measured on ``test``.

    ``frontiers`` maps a row prefix to a frontier fitted on another split (never on
    ``test``), e.g. ``{"cascade": fit_frontier(train), "cascade-preroute":
    fit_frontier(train, prerouting=True)}``: rows ``cascade@<budget>`` and
    ``cascade-preroute@<budget>`` then show whether pre-routing helps. Each row has
    ``accuracy``, ``cost_per_query`` and the per-tier ``answered`` and ``called`` shares;
    cascade rows add ``budget_per_query``, the numbers on the fitted split and the ``policy``
    (the policy file's ``cascade`` section). A budget below a frontier's cheapest cascade
    raises :class:`~tierlm.router.optimizer.InfeasibleBudgetError`.
    """
    rows = [_row(f"{name}-only", r) for name, r in evaluate_single_tiers(test).items()]
    rows.append(_row("oracle", evaluate_oracle(test)))
    for prefix, frontier in frontiers.items():
        rows += _cascade_rows(prefix, frontier, test, budgets)
    return rows


def frontier_on(frontier: Frontier, test: CascadeData) -> list[CascadeResult]:
    """Every cascade of a fitted frontier evaluated on ``test`` (for the plot's curve; on a
    split it was not fitted on, the curve need not be monotone)."""
    return [evaluate_cascade(test, point.policy) for point in frontier.points]
