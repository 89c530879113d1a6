"""The cost-accuracy plot is written as a readable PNG of the expected size."""

from __future__ import annotations

import numpy as np
import pytest

from tierlm.router.learn.cascade_eval import CascadeData, TierOutcomes, evaluate_oracle, evaluate_single_tiers
from tierlm.router.study.frontier_plot import plot_cost_accuracy
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
