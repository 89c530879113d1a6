"""The cost-accuracy plot (``cost_accuracy.png``): the cascade frontier as a step line, each
single tier, the oracle and any no-LLM baseline (e.g. ``knn-vote``) as points."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Protocol

from tierlm.router.learn.optimizer import Frontier

__all__ = ["plot_cost_accuracy"]


class _HasCostAccuracy(Protocol):
    accuracy: float
    cost_per_query: float


Point = tuple[float, float] | _HasCostAccuracy
"""(cost per query, accuracy), or anything with those two attributes (CascadeResult, FrontierPoint)."""


def _xy(point: Point) -> tuple[float, float]:
    if isinstance(point, tuple):
        return float(point[0]), float(point[1])
    return float(point.cost_per_query), float(point.accuracy)


def _decades(low: float, high: float) -> list[float]:
    """Powers of ten from the one at or above ``low`` to the one at or above ``high``; none
    below ``low``, whose label would sit on top of the 0 tick."""
    return [10.0**e for e in range(math.ceil(math.log10(low)), math.ceil(math.log10(high)) + 1)]


def plot_cost_accuracy(
    path: str | Path,
    *,
    frontier: Frontier | Sequence[Point],
    frontier_label: str = "cascade frontier",
    single_tiers: Mapping[str, Point] | None = None,
    oracle: Point | None = None,
    baselines: Mapping[str, Point] | None = None,
    log_x: bool = False,
    title: str | None = None,
) -> Path:
    """Write the plot as a PNG and return its path.

    The frontier is drawn as steps (the best accuracy within a budget holds until the next,
    dearer cascade). ``log_x`` puts cost on a log axis; when some cost is exactly 0 (a free
    tier) the axis is symlog, linear below the smallest positive cost, so that point still shows.
    """
    # Figure + Agg canvas directly: no pyplot, so no global backend or figure registry.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 4.5), dpi=120)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    points = frontier.points if isinstance(frontier, Frontier) else frontier
    curve = sorted(_xy(p) for p in points)
    costs: list[float] = [c for c, _ in curve]
    if curve:
        ax.plot(*zip(*curve, strict=True), drawstyle="steps-post", marker=".", markersize=3, color="C0",
                label=frontier_label)
    # Points take the colours after the frontier's, so none shares the line's colour.
    marked = [("o", name, p) for name, p in (single_tiers or {}).items()]
    marked += [("s", name, p) for name, p in (baselines or {}).items()]
    for k, (marker, name, point) in enumerate(marked):
        c, a = _xy(point)
        costs.append(c)
        ax.scatter([c], [a], marker=marker, s=40, color=f"C{k % 9 + 1}", zorder=3, label=name)
    if oracle is not None:
        c, a = _xy(oracle)
        costs.append(c)
        ax.scatter([c], [a], marker="*", s=120, color="black", zorder=3, label="oracle")
    if log_x:
        positive = [c for c in costs if c > 0]
        if positive and len(positive) < len(costs):
            ax.set_xscale("symlog", linthresh=min(positive), linscale=0.5)
            ax.set_xticks([0.0, *_decades(min(positive), max(positive))])
        elif positive:
            ax.set_xscale("log")
    ax.set_xlabel("mean cost per query")
    ax.set_ylabel("accuracy")
    if title:
        ax.set_title(title)
    ax.grid(True, alpha=0.3)
    ax.legend(loc="best", fontsize="small")
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path)
    return path
