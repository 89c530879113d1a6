"""Budget-constrained cascade optimizer: exact cost-accuracy frontier over cascades of depth <= 3.

Search space (FrugalGPT's, searched exactly instead of on a 40-point grid): every ordered
choice of 1 to ``max_depth`` distinct tiers, and for each non-last stage an acceptance
threshold among the *distinct training scores* of that tier (``score >= threshold``
accepts; every threshold between two neighbouring scores behaves like the upper one, so
nothing is lost). "Never accept" (threshold above every score) is left out: such a stage
only adds cost, and the shorter cascade without it is searched as well.

How it is exact: fix an order. Sort each stage's scores once; the queries a threshold
rejects are then a prefix of that sorted list. For depth 2 the accuracy and cost of every
threshold are prefix sums (one sorted sweep, O(n log n)). For depth 3 the queries reaching
stage 3 are those in the prefix of stage 1 *and* the prefix of stage 2, so accuracy and cost
of every threshold pair are 2-D dominance sums, built row by row (row = stage-1 threshold)
in vectorized blocks: O(K1 * K2) <= O(n^2) time per order and O(block_rows * n) memory.
Within a row the cost never decreases as the stage-2 threshold rises (costs are >= 0), so
a row's running maximum of accuracy gives every point of that row that is not dominated; the
global frontier keeps, per number of correct answers, the cheapest point. Depth <= 3 is
therefore the true optimum on the training split, for every budget at once.

One exact pruning shrinks K: raising a threshold past a score that the tier answers
correctly every time it occurs only escalates right answers (accuracy cannot rise, cost
cannot fall, whatever the other stages do), so such thresholds are not tried. K becomes the
number of distinct scores carrying an error, about n * (1 - tier accuracy).

Pre-routing (optional, ``prerouting=True``; tiers need ``fail_prob``): the first stage may
be skipped for queries whose ``fail_prob >= phi``. Depth 2: exact over every (phi, threshold)
pair, the same 2-D sweep with phi as the row (O(n * K) per order). Depth 3: phi takes at most
``preroute_grid`` = G values (all distinct fail probabilities when there are no more, else
the largest phi skipping at least k/(G+1) of the queries, k = 1..G), each searched exactly
over both score thresholds: O(G * K1 * K2) per order, a documented search rather than the
optimum. Skipping every query is left out (it is the shorter cascade).

Ties: among equal accuracy the lower cost wins; among equal cost the shallower cascade
(then the one found first) wins. Costs are compared with a relative tolerance of
``COST_RTOL`` (against budgets and against each other) that absorbs floating-point summation
order and nothing more: the same cascade summed two ways must tie, not win by rounding.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from tierlm.router.learn.cascade_eval import CascadeData, CascadePolicy, TierOutcomes

__all__ = [
    "COST_RTOL",
    "Frontier",
    "FrontierPoint",
    "InfeasibleBudgetError",
    "fit_frontier",
    "optimize",
]

COST_RTOL = 1e-9
"""Costs closer than this (relative) are equal: it absorbs floating-point summation order
when a cost meets a budget or two cascades tie, and is far below any real price difference."""

MAX_DEPTH = 3


class InfeasibleBudgetError(ValueError):
    """No cascade in the search space costs at most the budget; names the cheapest cost."""

    def __init__(self, budget: float, cheapest: FrontierPoint):
        self.budget = budget
        self.cheapest = cheapest
        super().__init__(
            f"budget {budget:.6g} per query is below the cheapest cascade "
            f"({'>'.join(cheapest.policy.order)} at {cheapest.cost_per_query:.6g} per query)"
        )


@dataclass(frozen=True)
class FrontierPoint:
    """One cascade on the frontier, with its accuracy and mean cost on the fitted split."""

    policy: CascadePolicy
    accuracy: float
    cost_per_query: float


@dataclass(frozen=True)
class Frontier:
    """The cost-accuracy frontier on the fitted split.

    ``points`` are sorted by cost; both cost and accuracy strictly increase along them, so the
    best accuracy within a budget is a non-decreasing step function of the budget.
    """

    points: tuple[FrontierPoint, ...]

    def best_within(self, budget: float) -> FrontierPoint:
        """The most accurate (then cheapest) cascade whose mean cost is <= ``budget``.

        Raises :class:`InfeasibleBudgetError` (carrying the cheapest point) when even the
        cheapest cascade costs more: a policy over budget is never returned silently.
        """
        idx = self._index_within(np.asarray([budget], dtype=np.float64))[0]
        if idx < 0:
            raise InfeasibleBudgetError(budget, self.points[0])
        return self.points[idx]

    def accuracy_at(self, budgets: Sequence[float] | np.ndarray) -> np.ndarray:
        """Best accuracy for each budget; NaN where the budget is infeasible."""
        idx = self._index_within(np.asarray(budgets, dtype=np.float64))
        acc = np.asarray([p.accuracy for p in self.points])
        return np.where(idx >= 0, acc[np.maximum(idx, 0)], np.nan)

    def _index_within(self, budgets: np.ndarray) -> np.ndarray:
        costs = np.asarray([p.cost_per_query for p in self.points])
        limit = budgets * (1.0 + COST_RTOL)
        return np.searchsorted(costs, limit, side="right") - 1


def optimize(
    data: CascadeData,
    budget: float,
    *,
    tiers: Iterable[str] | None = None,
    max_depth: int = MAX_DEPTH,
    prerouting: bool = False,
    preroute_grid: int = 8,
) -> FrontierPoint:
    """The most accurate cascade with mean cost per query <= ``budget`` on ``data``.

    Same arguments as :func:`fit_frontier`; raises :class:`InfeasibleBudgetError` when no
    cascade fits the budget.
    """
    frontier = fit_frontier(
        data, tiers=tiers, max_depth=max_depth, prerouting=prerouting, preroute_grid=preroute_grid
    )
    return frontier.best_within(budget)


def fit_frontier(
    data: CascadeData,
    *,
    tiers: Iterable[str] | None = None,
    max_depth: int = MAX_DEPTH,
    prerouting: bool = False,
    preroute_grid: int = 8,
    block_rows: int = 256,
) -> Frontier:
    """The exact cost-accuracy frontier over all cascades of ``tiers`` (default: all) up to
    ``max_depth`` stages (1..3); see the module docstring for the search and its cost.

    ``prerouting`` adds cascades whose first stage is skipped for queries with
    ``fail_prob >= phi``, for first tiers that carry ``fail_prob``. ``block_rows`` bounds the
    memory of the 2-D sweeps (about ``block_rows * n * 60`` bytes).
    """
    names = list(data.tiers) if tiers is None else list(tiers)
    unknown = [t for t in names if t not in data.tiers]
    if unknown or not names or len(set(names)) != len(names):
        raise ValueError(f"tiers must be distinct names from the split {list(data.tiers)}, got {names}")
    if not 1 <= max_depth <= MAX_DEPTH:
        raise ValueError(f"max_depth must be 1..{MAX_DEPTH}, got {max_depth}")
    if preroute_grid < 1:
        raise ValueError("preroute_grid must be >= 1")
    stats = {t: _TierStats.of(data.tiers[t]) for t in names}
    best = _Best(data.n)
    # Shallow before deep and plain before pre-routed: on equal cost (within COST_RTOL) the
    # first kept wins, so the simpler cascade is preferred.
    for depth in range(1, max_depth + 1):
        for order in itertools.permutations(names, depth):
            for sweep in _sweeps(order, stats, prerouting=False, preroute_grid=preroute_grid):
                best.add(sweep, block_rows)
        if prerouting and depth >= 2:
            for order in itertools.permutations(names, depth):
                for sweep in _sweeps(order, stats, prerouting=True, preroute_grid=preroute_grid):
                    best.add(sweep, block_rows)
    return best.frontier()


@dataclass(frozen=True)
class _TierStats:
    """A tier's arrays plus its score ranks (and descending fail-probability ranks)."""

    correct: np.ndarray  # float64 0/1, so sums stay exact integers
    cost: np.ndarray
    score_values: np.ndarray  # distinct scores, ascending
    score_rank: np.ndarray  # index of each query's score in score_values
    useful_cuts: np.ndarray  # cut indices k worth trying as threshold score_values[k]
    fail_values: np.ndarray | None  # distinct fail probabilities, descending
    fail_rank: np.ndarray | None

    @classmethod
    def of(cls, tier: TierOutcomes) -> _TierStats:
        values, rank = np.unique(tier.score, return_inverse=True)
        # Raising the threshold from score_values[k] to score_values[k+1] escalates the
        # queries scoring exactly score_values[k]. If the tier answers all of them correctly,
        # that can only lose accuracy and add cost, whatever the other stages do, so the cut
        # k+1 is dominated by k: try it only if those queries hold an error.
        has_error = np.bincount(rank, ~tier.correct, minlength=len(values)) > 0
        useful = np.flatnonzero(np.concatenate(([True], has_error[:-1])))
        fail_values = fail_rank = None
        if tier.fail_prob is not None:
            neg_values, fail_rank = np.unique(-tier.fail_prob, return_inverse=True)
            fail_values = -neg_values
        return cls(tier.correct.astype(np.float64), tier.cost, values, rank, useful, fail_values, fail_rank)


@dataclass(frozen=True)
class _Terms:
    """f(k1, k2) = base + sum_{x<k1} on_x + sum_{y<k2} on_y + sum_{x<k1, y<k2} on_xy."""

    base: float
    on_x: np.ndarray
    on_y: np.ndarray
    on_xy: np.ndarray


@dataclass(frozen=True)
class _Sweep:
    """Accuracy and cost of one family of cascades over a 2-D grid of cuts.

    Query i lies in the row set X(k1) iff ``x[i] < k1`` and in the column set Y(k2) iff
    ``y[i] < k2``; k1 runs over ``rows`` and k2 over ``cols`` (both ascending). Cost must not
    decrease along ``cols`` in any row (true for every family built in :func:`_sweeps`).
    """

    x: np.ndarray
    rows: np.ndarray
    y: np.ndarray
    cols: np.ndarray
    correct: _Terms  # number of correct answers
    cost: _Terms  # total cost over all queries
    decode: Callable[[int, int], CascadePolicy]


def _sweeps(
    order: tuple[str, ...], stats: dict[str, _TierStats], *, prerouting: bool, preroute_grid: int
) -> Iterable[_Sweep]:
    """The sweeps covering every cascade with this order (pre-routed ones if ``prerouting``)."""
    a = stats[order[0]]
    n = a.correct.shape[0]
    zeros = np.zeros(n)
    none = np.zeros(n, dtype=np.int64)
    only_zero = np.zeros(1, dtype=np.int64)

    if len(order) == 1:
        if not prerouting:
            yield _Sweep(none, only_zero, none, only_zero,
                         _Terms(a.correct.sum(), zeros, zeros, zeros),
                         _Terms(a.cost.sum(), zeros, zeros, zeros),
                         lambda k1, k2: CascadePolicy(order))
        return

    if len(order) == 2:
        b = stats[order[1]]
        gain = b.correct - a.correct  # what escalating a query changes in correct answers

        def thresholds(k2: int) -> dict[str, float]:
            return {order[0]: float(a.score_values[k2])}

        if not prerouting:
            # One row; Y = the queries stage 1 rejects, a prefix of its sorted scores.
            yield _Sweep(none, only_zero, a.score_rank, a.useful_cuts,
                         _Terms(a.correct.sum(), zeros, gain, zeros),
                         _Terms(a.cost.sum(), zeros, b.cost, zeros),
                         lambda k1, k2: CascadePolicy(order, thresholds(k2)))
        elif a.fail_rank is not None:
            # Rows X = skipped queries (fail_prob >= phi), columns Y = rejected by stage 1;
            # stage 2 answers X | Y, stage 1 is paid outside X. Row 0 (no skip) is the plain
            # sweep above; skipping every query is the single tier.
            fail_values = a.fail_values

            def decode(k1: int, k2: int) -> CascadePolicy:
                return CascadePolicy(order, thresholds(k2), {order[0]: float(fail_values[k1 - 1])})

            yield _Sweep(a.fail_rank, np.arange(1, len(fail_values)), a.score_rank, a.useful_cuts,
                         _Terms(a.correct.sum(), gain, gain, -gain),
                         _Terms(a.cost.sum(), b.cost - a.cost, b.cost, -b.cost),
                         decode)
        return

    b, c = stats[order[1]], stats[order[2]]
    skip_options: list[float | None] = [None]
    if prerouting:
        if a.fail_rank is None:
            return
        skip_options = list(_skip_grid(a, preroute_grid))
    for phi in skip_options:
        # Rows: X = queries stage 1 skips or rejects. Skipped queries get x = 0 and every
        # row has k1 >= 1, so they are always in X; the others have x = 1 + score rank.
        skipped = np.zeros(n, dtype=bool) if phi is None else a.fail_values[a.fail_rank] >= phi
        x = np.where(skipped, 0, a.score_rank + 1)
        cost_a = np.where(skipped, 0.0, a.cost)

        def decode(k1: int, k2: int, phi: float | None = phi) -> CascadePolicy:
            thresholds = {order[0]: float(a.score_values[k1 - 1]), order[1]: float(b.score_values[k2])}
            return CascadePolicy(order, thresholds, {} if phi is None else {order[0]: phi})

        yield _Sweep(x, a.useful_cuts + 1, b.score_rank, b.useful_cuts,
                     _Terms(a.correct.sum(), b.correct - a.correct, zeros, c.correct - b.correct),
                     _Terms(cost_a.sum(), b.cost, zeros, c.cost),
                     decode)


def _skip_grid(a: _TierStats, size: int) -> list[float]:
    """Skip thresholds for depth 3: every distinct fail probability but the smallest (that
    one would skip every query) when there are at most ``size``, else for k = 1..size the
    largest phi whose skip set {fail_prob >= phi} holds at least k/(size+1) of the queries."""
    candidates = a.fail_values[:-1]
    if len(candidates) <= size:
        return [float(v) for v in candidates]
    share = np.cumsum(np.bincount(a.fail_rank)) / a.fail_rank.shape[0]  # skip share per phi
    picks = np.searchsorted(share, np.arange(1, size + 1) / (size + 1), side="left")
    return [float(candidates[j]) for j in np.unique(np.minimum(picks, len(candidates) - 1))]


def _records(sweep: _Sweep, block_rows: int) -> Iterable[tuple[np.ndarray, ...]]:
    """Per block of rows, the points no earlier point of the same row dominates:
    (correct count, total cost, k1, k2) arrays. Cost is non-decreasing along a row, so these
    are exactly the places where the row's running maximum of correct answers rises."""
    s = sweep
    n_rows, n_cols = len(s.rows), len(s.cols)
    # Compress to grid coordinates: query i is in X(rows[r]) iff xg[i] <= r, and in
    # Y(cols[c]) iff yg[i] <= c; xg == n_rows means "in no row's X" (same for yg).
    xg = np.searchsorted(s.rows, s.x, side="right")
    yg = np.searchsorted(s.cols, s.y, side="right")
    by_x = np.argsort(xg, kind="stable")
    xs, ys = xg[by_x], yg[by_x]
    starts = np.searchsorted(xs, np.arange(n_rows + 1))  # starts[r] = number with xg < r
    terms = (s.correct, s.cost)
    row_part = [np.cumsum(np.bincount(xg, t.on_x, minlength=n_rows + 1)[:n_rows]) for t in terms]
    col_part = [t.base + np.cumsum(np.bincount(yg, t.on_y, minlength=n_cols + 1)[:n_cols]) for t in terms]
    cross = [t.on_xy[by_x] for t in terms]
    carry = [np.zeros(n_cols), np.zeros(n_cols)]  # carry[c]: on_xy summed over xg < r0, yg <= c
    for r0 in range(0, n_rows, block_rows):
        r1 = min(r0 + block_rows, n_rows)
        seg = slice(starts[r0], starts[r1])
        flat = (xs[seg] - r0) * (n_cols + 1) + ys[seg]
        grids = []
        for t in range(2):
            hist = np.bincount(flat, cross[t][seg], minlength=(r1 - r0) * (n_cols + 1))
            hist = hist.reshape(r1 - r0, n_cols + 1)[:, :n_cols]
            np.cumsum(hist, axis=0, out=hist)
            np.cumsum(hist, axis=1, out=hist)
            grid = hist + carry[t]
            carry[t] = grid[-1].copy()
            grid += row_part[t][r0:r1, None]
            grid += col_part[t]
            grids.append(grid)
        correct, cost = grids
        running = np.maximum.accumulate(correct, axis=1)
        rises = np.empty(correct.shape, dtype=bool)
        rises[:, 0] = True
        np.greater(correct[:, 1:], running[:, :-1], out=rises[:, 1:])
        r, c = np.nonzero(rises)
        yield np.rint(correct[r, c]).astype(np.int64), cost[r, c], s.rows[r + r0], s.cols[c]


class _Best:
    """Per number of correct answers, the cheapest cascade seen so far (first one on ties)."""

    def __init__(self, n: int):
        self.n = n
        self.cost = np.full(n + 1, np.inf)
        self.sweep = np.full(n + 1, -1, dtype=np.int64)
        self.k1 = np.zeros(n + 1, dtype=np.int64)
        self.k2 = np.zeros(n + 1, dtype=np.int64)
        self.decoders: list[Callable[[int, int], CascadePolicy]] = []

    def add(self, sweep: _Sweep, block_rows: int) -> None:
        sweep_id = len(self.decoders)
        self.decoders.append(sweep.decode)
        for count, cost, k1, k2 in _records(sweep, block_rows):
            # Equal up to summation rounding counts as a tie, which the earlier cascade keeps.
            better = cost < self.cost[count] * (1.0 - COST_RTOL)
            count, cost, k1, k2 = count[better], cost[better], k1[better], k2[better]
            # Cheapest per count within the block; the stable sort keeps the first on ties.
            order = np.lexsort((cost, count))
            count, cost, k1, k2 = count[order], cost[order], k1[order], k2[order]
            first = np.ones(count.shape, dtype=bool)
            first[1:] = count[1:] != count[:-1]
            won = count[first]
            self.cost[won] = cost[first]
            self.sweep[won] = sweep_id
            self.k1[won] = k1[first]
            self.k2[won] = k2[first]

    def frontier(self) -> Frontier:
        # A count stays only if it is cheaper than every higher count (beyond rounding).
        cheaper_above = np.append(np.minimum.accumulate(self.cost[::-1])[::-1][1:], np.inf)
        keep = np.flatnonzero(self.cost < cheaper_above * (1.0 - COST_RTOL))
        return Frontier(
            tuple(
                FrontierPoint(
                    policy=self.decoders[self.sweep[c]](int(self.k1[c]), int(self.k2[c])),
                    accuracy=float(c / self.n),
                    cost_per_query=float(self.cost[c] / self.n),
                )
                for c in keep
            )
        )
