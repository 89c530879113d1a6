"""The cost-accuracy plot is written as a readable PNG of the expected size."""

from __future__ import annotations

import numpy as np
import pytest

from tierlm.router.learn.cascade_eval import CascadeData, TierOutcomes, evaluate_oracle, evaluate_single_tiers
from tierlm.router.study.frontier_plot import cost_accuracy_figure, plot_cost_accuracy
from tierlm.router.learn.optimizer import fit_frontier


@pytest.mark.parametrize("log_x", [False, True])
def test_plot_is_written(tmp_path, log_x: bool) -> None:
    from matplotlib.image import imread

    rng = np.random.default_rng(0)
    n = 50
    data = CascadeData(
        {
            # A free tier makes the log axis fall back to symlog.
            "knn": TierOutcomes(rng.random(n) < 0.6, rng.random(n), np.zeros(n)),
            "edge": TierOutcomes(rng.random(n) < 0.7, rng.random(n), np.full(n, 1e-6)),
            "cloud": TierOutcomes(rng.random(n) < 0.8, rng.random(n), np.full(n, 2e-5)),
        }
    )
    path = plot_cost_accuracy(
        tmp_path / "cost_accuracy.png",
        frontier=fit_frontier(data),
        single_tiers=evaluate_single_tiers(data),
        oracle=evaluate_oracle(data),
        baselines={"knn-vote": (0.0, 0.8)},
        log_x=log_x,
        title="synthetic",
    )
    image = imread(path)
    assert image.shape[:2] == (540, 840)
    assert image[..., :3].std() > 0  # something was drawn


def test_a_live_cascade_shows_as_a_marker_and_no_tick_labels_collide() -> None:
    """The demo's plot: one cascade point between two tiers, costs spanning under two decades."""
    fig = cost_accuracy_figure(frontier=[(1.02e-6, 0.805)], frontier_label="cascade (live)",
                               single_tiers={"edge-only": (2.18e-7, 0.765), "cloud-only": (7.66e-6, 0.8)}, log_x=True)
    renderer = fig.canvas.get_renderer()
    fig.draw(renderer)
    (ax,) = fig.axes
    sizes = {c.get_label(): c.get_sizes()[0] for c in ax.collections}
    assert sizes["cascade (live)"] >= max(sizes["edge-only"], sizes["cloud-only"])
    low, high = ax.get_xlim()
    labels = [label for tick, label in zip([*ax.get_xticks(), *ax.get_xticks(minor=True)],
                                           [*ax.get_xticklabels(), *ax.get_xticklabels(minor=True)])
              if label.get_text() and low <= tick <= high]
    boxes = [label.get_window_extent(renderer) for label in labels]
    assert len(boxes) >= 2
    assert not any(a.overlaps(b) for i, a in enumerate(boxes) for b in boxes[i + 1 :])
    legend = ax.get_legend().get_window_extent(renderer)
    assert legend.x0 >= ax.get_window_extent(renderer).x1  # beside the points, never on one
