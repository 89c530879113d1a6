"""The cost-accuracy plot (``cost_accuracy.png``): the cascade frontier as a step line, each
single tier, the oracle and any no-LLM baseline (e.g. ``knn-vote``) as points."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from tierlm.router.learn.optimizer import Frontier

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = ["cost_accuracy_figure", "plot_cost_accuracy"]


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


def plot_cost_accuracy(path: str | Path, **figure_options: Any) -> Path:
    """Write :func:`cost_accuracy_figure` as a PNG and return its path."""
    path = Path(path)
    cost_accuracy_figure(**figure_options).savefig(path)
    return path


def cost_accuracy_figure(
    *,
    frontier: Frontier | Sequence[Point],
    frontier_label: str = "cascade frontier",
    single_tiers: Mapping[str, Point] | None = None,
    oracle: Point | None = None,
    baselines: Mapping[str, Point] | None = None,
    log_x: bool = False,
    title: str | None = None,
) -> Figure:
    """The cost-accuracy figure, drawn on an Agg canvas.

    The frontier is drawn as steps (the best accuracy within a budget holds until the next,
    dearer cascade); a frontier of one point (a live cascade) as a marker as large as the
    tiers'. ``log_x`` puts cost on a log axis, labelled at whole decades only (the range is
    widened to the decades around the points, so at least two are labelled); when some cost
    is exactly 0 (a free tier) the axis is symlog, linear below the smallest positive cost, so
    that point still shows.
    """
    # Figure + Agg canvas directly: no pyplot, so no global backend or figure registry.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import LogLocator, NullFormatter

    fig = Figure(figsize=(7, 4.5), dpi=120)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    points = frontier.points if isinstance(frontier, Frontier) else frontier
    curve = sorted(_xy(p) for p in points)
    costs: list[float] = [c for c, _ in curve]
    if len(curve) == 1:
        ax.scatter(*curve[0], marker="D", s=70, color="C0", zorder=4, label=frontier_label)
    elif curve:
        ax.plot(*zip(*curve, strict=True), drawstyle="steps-post", marker=".", markersize=3, color="C0",
                label=frontier_label)
    # Points take the colours after the frontier's, so none shares the line's colour.
    marked = [("o", name, p) for name, p in (single_tiers or {}).items()]
    marked += [("s", name, p) for name, p in (baselines or {}).items()]
    for k, (marker, name, point) in enumerate(marked):
        c, a = _xy(point)
        costs.append(c)
        ax.scatter([c], [a], marker=marker, s=50, color=f"C{k % 9 + 1}", zorder=3, label=name)
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
            low, high = 10.0 ** math.floor(math.log10(min(positive))), 10.0 ** math.ceil(math.log10(max(positive)))
            ax.set_xlim(low, high if high > low else low * 10)
            ax.xaxis.set_major_locator(LogLocator(base=10))
        # Labels at 2x, 3x, ... between decades collide on a narrow axis; their ticks stay.
        ax.xaxis.set_minor_formatter(NullFormatter())
    ax.margins(y=0.1)
    ax.set_xlabel("mean cost per query")
    ax.set_ylabel("accuracy")
    if title:
        ax.set_title(title)
    ax.grid(True, alpha=0.3)
    # Outside the axes: inside, "best" still lands on a point when the corners are all taken.
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize="small", borderaxespad=0.0)
    fig.tight_layout()
    return fig
