"""Wanda (Sun et al., 2023): prune by ``|W_ij| · ‖X_j‖₂``, compared within each output row.

The score is the size of weight ``ij``'s contribution to the layer output over the calibration
inputs; no weights are updated. Per-row comparison (rather than per layer) is what the paper
found to matter for LLMs. ``‖X_j‖₂`` comes from :attr:`LayerStats.col_norm` (upstream uses
``‖X_j‖₂ / sqrt(n)``; the constant factor does not change the ranking).
"""

from __future__ import annotations

import torch
from tierlm.kernels.calibration import LayerStats
from tierlm.kernels.sparse.base import Pruner, PruneResult
from tierlm.kernels.sparse.pattern import select_mask


class WandaPruner(Pruner):
    name = "wanda"
    needs = frozenset({"sq_sum"})

    @torch.no_grad()
    def prune(self, weight: torch.Tensor, calib: LayerStats | None = None) -> PruneResult:
        norms = self._require(calib).col_norm
        w = weight.detach().to(torch.float32)
        mask = select_mask(w.abs() * norms.unsqueeze(0), self.pattern, scope="row")
        return PruneResult(mask, w * mask)
