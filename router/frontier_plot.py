"""The cost-accuracy plot (``cost_accuracy.png``): the cascade frontier as a step line, each
single tier, the oracle and any no-LLM baseline (e.g. ``knn-vote``) as points."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Protocol

from tierlm.router.optimizer import Frontier

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
        ax.plot(*zip(*curve, strict=True), drawstyle="steps-post", marker=".", markersize=3, label=frontier_label)
    for name, point in (single_tiers or {}).items():
        c, a = _xy(point)
        costs.append(c)
        ax.scatter([c], [a], marker="o", s=40, zorder=3, label=name)
    for name, point in (baselines or {}).items():
        c, a = _xy(point)
        costs.append(c)
        ax.scatter([c], [a], marker="s", s=40, zorder=3, label=name)
    if oracle is not None:
        c, a = _xy(oracle)
        costs.append(c)
        ax.scatter([c], [a], marker="*", s=120, color="black", zorder=3, label="oracle")
    if log_x:
        positive = [c for c in costs if c > 0]
        if positive and len(positive) < len(costs):
            ax.set_xscale("symlog", linthresh=min(positive))
        elif positive:
            ax.set_xscale("log")
    ax.set_xlabel("mean cost per query")
    ax.set_ylabel("accuracy")
    if title:
        ax.set_title(title)
    ax.grid(True, alpha=0.3)
    ax.legend(loc="lower right", fontsize="small")
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path)
    return path
