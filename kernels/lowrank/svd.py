"""Plain truncated SVD: the best rank-r approximation in weight Frobenius norm (data-free)."""

from __future__ import annotations

import torch
from tierlm.kernels.calibration import LayerStats
from tierlm.kernels.lowrank.base import Decomposition, Factorizer


class SVDFactorizer(Factorizer):
    name = "svd"

    @torch.no_grad()
    def decompose(self, weight: torch.Tensor, calib: LayerStats | None = None) -> Decomposition:
        u, s, vh = torch.linalg.svd(weight.detach().to(torch.float32), full_matrices=False)
        return Decomposition(u, s, vh)
