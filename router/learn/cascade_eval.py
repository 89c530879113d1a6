"""Offline evaluation of cascades on one labelled split, from arrays only.

Conventions used everywhere in the router's decision core:

* A split holds, per tier and per query ``i``: ``correct[i]`` (did the tier answer right),
  ``score[i]`` (the scorer's P(correct) for that answer), ``cost[i]`` (what calling the tier
  on that query costs, in the policy's currency, >= 0) and optionally ``fail_prob[i]`` (a
  query-only pre-router's probability that the tier will be wrong).
* A cascade calls its stages in order. Every stage a query enters is paid for, whether its
  answer is kept or not. Stage ``j`` (not the last) *accepts* when ``score >= threshold``:
  a threshold equal to a score accepts that score. The last stage always accepts.
* Pre-routing: a non-last stage with a skip threshold ``phi`` is skipped, unpaid, for the
  queries whose ``fail_prob >= phi``; they go straight to the next stage.
* Accuracy is the share of queries answered correctly; cost is the mean cost per query.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

import numpy as np

from tierlm.router.decision import accepts

__all__ = [
    "CascadeData",
    "CascadePolicy",
    "CascadeResult",
    "TierOutcomes",
    "evaluate_cascade",
    "evaluate_oracle",
    "evaluate_single_tiers",
]


def _frozen(values: np.ndarray) -> np.ndarray:
    values.setflags(write=False)
    return values


@dataclass(frozen=True)
class TierOutcomes:
    """One tier's outcomes on every query of a split (all arrays have length n)."""

    correct: np.ndarray
    """bool[n]: the tier's answer matched the label."""
    score: np.ndarray
    """float[n]: the scorer's P(correct) for the tier's answer; higher means more trusted."""
    cost: np.ndarray
    """float[n]: cost of one call of this tier on the query, >= 0."""
    fail_prob: np.ndarray | None = None
    """float[n] or None: a query-only pre-router's P(this tier answers wrongly)."""

    def __post_init__(self) -> None:
        correct = np.asarray(self.correct)
        if correct.dtype != np.bool_:
            if not np.isin(correct, (0, 1)).all():
                raise ValueError("correct must be boolean (or 0/1)")
            correct = correct.astype(bool)
        score = np.asarray(self.score, dtype=np.float64)
        cost = np.asarray(self.cost, dtype=np.float64)
        arrays = {"correct": correct, "score": score, "cost": cost}
        if self.fail_prob is not None:
            arrays["fail_prob"] = np.asarray(self.fail_prob, dtype=np.float64)
        n = correct.shape[0] if correct.ndim == 1 else -1
        for name, values in arrays.items():
            if values.ndim != 1 or values.shape[0] != n:
                raise ValueError(f"{name} must be one-dimensional with the length of correct")
            if values.dtype == np.float64 and not np.isfinite(values).all():
                raise ValueError(f"{name} must be finite")
        if (cost < 0).any():
            # The optimizer's sweeps rely on a later stage never lowering the cost.
            raise ValueError("cost must be >= 0")
        for name, values in arrays.items():
            object.__setattr__(self, name, _frozen(values.copy()))

    @property
    def n(self) -> int:
        """Number of queries."""
        return int(self.correct.shape[0])


@dataclass(frozen=True)
class CascadeData:
    """Every tier's outcomes on one split; all tiers cover the same n queries in the same order."""

    tiers: Mapping[str, TierOutcomes]

    def __post_init__(self) -> None:
        if not self.tiers:
            raise ValueError("a split needs at least one tier")
        sizes = {name: t.n for name, t in self.tiers.items()}
        if len(set(sizes.values())) != 1:
            raise ValueError(f"tiers cover different numbers of queries: {sizes}")
        if next(iter(sizes.values())) == 0:
            raise ValueError("a split needs at least one query")
        object.__setattr__(self, "tiers", MappingProxyType(dict(self.tiers)))

    @property
    def n(self) -> int:
        """Number of queries."""
        return next(iter(self.tiers.values())).n

    def save_npz(self, path: str | Path) -> None:
        """Write the split as ``<tier>.correct``, ``<tier>.score``, ... arrays in one .npz."""
        arrays: dict[str, np.ndarray] = {}
        for name, t in self.tiers.items():
            for key in ("correct", "score", "cost", "fail_prob"):
                value = getattr(t, key)
                if value is not None:
                    arrays[f"{name}.{key}"] = value
        np.savez(path, **arrays)

    @classmethod
    def load_npz(cls, path: str | Path) -> CascadeData:
        """Read a split written by :meth:`save_npz` (tier order is the file's key order)."""
        with np.load(path) as npz:
            grouped: dict[str, dict[str, np.ndarray]] = {}
            for key in npz.files:
                name, _, field_name = key.rpartition(".")
                if not name or field_name not in ("correct", "score", "cost", "fail_prob"):
                    raise ValueError(f"{path}: unexpected array {key!r}")
                grouped.setdefault(name, {})[field_name] = npz[key]
        return cls({name: TierOutcomes(**fields) for name, fields in grouped.items()})


@dataclass(frozen=True)
class CascadePolicy:
    """A cascade: which tiers in which order, and when each non-last stage stops the query.

    ``thresholds[tier]``: accept the tier's answer iff ``score >= thresholds[tier]``; one for
    every stage but the last. ``skip_thresholds[tier]`` (optional, non-last stages only): skip
    the tier without calling it iff the query's ``fail_prob >= skip_thresholds[tier]``.
    """

    order: tuple[str, ...]
    thresholds: Mapping[str, float] = field(default_factory=dict)
    skip_thresholds: Mapping[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        order = tuple(self.order)
        if not order or len(set(order)) != len(order):
            raise ValueError(f"order must name at least one tier, each once: {order}")
        if set(self.thresholds) != set(order[:-1]):
            raise ValueError(
                f"thresholds must be given for exactly the non-last stages {list(order[:-1])}, "
                f"got {sorted(self.thresholds)}"
            )
        if not set(self.skip_thresholds) <= set(order[:-1]):
            raise ValueError("skip_thresholds may only name non-last stages of the order")
        for kind, values in (("thresholds", self.thresholds), ("skip_thresholds", self.skip_thresholds)):
            if not all(math.isfinite(v) for v in values.values()):
                raise ValueError(f"{kind} must be finite")
        object.__setattr__(self, "order", order)
        object.__setattr__(self, "thresholds", MappingProxyType({t: float(self.thresholds[t]) for t in order[:-1]}))
        object.__setattr__(
            self,
            "skip_thresholds",
            MappingProxyType({t: float(self.skip_thresholds[t]) for t in order if t in self.skip_thresholds}),
        )

    def to_policy_section(self, budget_per_query: float) -> dict[str, Any]:
        """The ``cascade`` section of the policy file (docs/policy.md), plain JSON/YAML types.

        ``skip_thresholds`` appears only when the cascade pre-routes.
        """
        section: dict[str, Any] = {
            "order": list(self.order),
            "thresholds": dict(self.thresholds),
            "budget_per_query": float(budget_per_query),
        }
        if self.skip_thresholds:
            section["skip_thresholds"] = dict(self.skip_thresholds)
        return {"cascade": section}

    @classmethod
    def from_policy_section(cls, section: Mapping[str, Any]) -> CascadePolicy:
        """Read the mapping under ``cascade`` (or a whole ``{"cascade": ...}`` document)."""
        body = section.get("cascade", section)
        return cls(
            order=tuple(body["order"]),
            thresholds=dict(body.get("thresholds", {})),
            skip_thresholds=dict(body.get("skip_thresholds", {})),
        )


@dataclass(frozen=True)
class CascadeResult:
    """What a cascade (or a single tier, or the oracle) achieves on a split."""

    accuracy: float
    """Share of queries answered correctly."""
    cost_per_query: float
    """Mean over queries of the summed cost of every tier the query was sent to."""
    answered: Mapping[str, float]
    """Per tier: share of queries whose final answer came from it (sums to 1)."""
    called: Mapping[str, float]
    """Per tier: share of queries that paid for a call to it."""
    correct: np.ndarray | None = field(default=None, repr=False, compare=False)
    """bool[n]: per query, whether the final answer was right (for paired comparisons and
    confidence intervals); None where unknown."""


def _check_known(data: CascadeData, order: tuple[str, ...]) -> None:
    unknown = [t for t in order if t not in data.tiers]
    if unknown:
        raise KeyError(f"tiers {unknown} are not in the split (have {list(data.tiers)})")


def evaluate_cascade(data: CascadeData, policy: CascadePolicy) -> CascadeResult:
    """What ``policy`` achieves on ``data``, following the conventions in the module docstring."""
    _check_known(data, policy.order)
    n = data.n
    pending = np.ones(n, dtype=bool)
    correct = np.zeros(n, dtype=bool)
    cost = np.zeros(n, dtype=np.float64)
    answered: dict[str, float] = {}
    called: dict[str, float] = {}
    last = len(policy.order) - 1
    for stage, name in enumerate(policy.order):
        tier = data.tiers[name]
        enter = pending.copy()
        if name in policy.skip_thresholds:
            if tier.fail_prob is None:
                raise ValueError(f"policy skips {name!r} by fail_prob, but the split has none for it")
            enter &= tier.fail_prob < policy.skip_thresholds[name]
        cost[enter] += tier.cost[enter]
        accept = enter if stage == last else enter & accepts(tier.score, policy.thresholds[name])
        correct[accept] = tier.correct[accept]
        pending &= ~accept
        answered[name] = float(accept.mean())
        called[name] = float(enter.mean())
    return CascadeResult(
        accuracy=float(correct.mean()),
        cost_per_query=float(cost.mean()),
        answered=MappingProxyType(answered),
        called=MappingProxyType(called),
        correct=_frozen(correct),
    )


def evaluate_single_tiers(data: CascadeData) -> dict[str, CascadeResult]:
    """Each tier answering every query on its own."""
    return {name: evaluate_cascade(data, CascadePolicy((name,))) for name in data.tiers}


def evaluate_oracle(data: CascadeData) -> CascadeResult:
    """The oracle that knows, per query, the cheapest tier that answers it correctly.

    Cost convention: the oracle pays only the tier it picks (no cascade up to it). A query no
    tier answers correctly goes to its cheapest tier, paid and wrong. Cost ties go to the tier
    listed first in ``data.tiers``.
    """
    names = list(data.tiers)
    costs = np.stack([data.tiers[t].cost for t in names])
    correct = np.stack([data.tiers[t].correct for t in names])
    # argmin picks the first tier among equal costs; wrong tiers are priced out with +inf.
    pick_correct = np.argmin(np.where(correct, costs, np.inf), axis=0)
    pick = np.where(correct.any(axis=0), pick_correct, np.argmin(costs, axis=0))
    cols = np.arange(data.n)
    return CascadeResult(
        accuracy=float(correct[pick, cols].mean()),
        cost_per_query=float(costs[pick, cols].mean()),
        answered=MappingProxyType({t: float((pick == k).mean()) for k, t in enumerate(names)}),
        called=MappingProxyType({t: float((pick == k).mean()) for k, t in enumerate(names)}),
        correct=_frozen(correct[pick, cols]),
    )
