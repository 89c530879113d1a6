"""Shared fixtures: weight matrices and calibration activations with real outlier structure."""

import pytest
import torch
from tierlm.kernels.calibration import LayerStats, StatsSpec


def gaussian(n: int, k: int, seed: int) -> torch.Tensor:
    return torch.randn(n, k, generator=torch.Generator().manual_seed(seed)) * 0.02


def heavy_tailed(n: int, k: int, seed: int) -> torch.Tensor:
    """Student-t (2 d.o.f.) entries: rare huge weights, as in trained LLM layers."""
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n, k, generator=g)
    chi2 = torch.randn(n, k, 2, generator=g).pow(2).sum(-1)
    return 0.02 * z / (chi2 / 2).sqrt()


WEIGHTS = {"gaussian": gaussian, "heavy_tailed": heavy_tailed}


class OutlierActivations:
    """LLM-like layer inputs: correlated features (low-rank mixing) plus a few huge channels."""

    def __init__(self, k: int, seed: int = 0, n_outliers: int = 6) -> None:
        g = torch.Generator().manual_seed(seed)
        self.k = k
        self.mix = torch.randn(k // 8, k, generator=g) / (k // 8) ** 0.5
        self.outliers = torch.randperm(k, generator=g)[:n_outliers]
        self.gen = g

    def sample(self, n: int) -> torch.Tensor:
        x = torch.randn(n, self.mix.shape[0], generator=self.gen) @ self.mix
        x = x + 0.3 * torch.randn(n, self.k, generator=self.gen)
        x[:, self.outliers] *= 25
        return x


@pytest.fixture(scope="module")
def outlier_layer():
    """(weight, calibration stats, held-out inputs) for one 128x256 layer."""
    k = 256
    acts = OutlierActivations(k)
    stats = LayerStats(k, StatsSpec(hessian=True, max_samples=512))
    for _ in range(4):
        stats.update(acts.sample(512))
    return gaussian(128, k, 1), stats, acts.sample(1024)


@pytest.fixture(scope="session")
def make_weight():
    """``make_weight(dist, n, k, seed)`` with dist in ``gaussian`` / ``heavy_tailed``."""
    return lambda dist, n, k, seed: WEIGHTS[dist](n, k, seed)


@pytest.fixture(scope="session")
def activations():
    """The :class:`OutlierActivations` class (test modules cannot import conftest)."""
    return OutlierActivations
