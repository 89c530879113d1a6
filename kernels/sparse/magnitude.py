"""Magnitude pruning: drop the smallest ``|W|`` (data-free baseline)."""

from __future__ import annotations

from typing import Any

import torch
from tierlm.kernels.calibration import LayerStats
from tierlm.kernels.sparse.base import Pruner, PruneResult
from tierlm.kernels.sparse.pattern import Scope, select_mask


class MagnitudePruner(Pruner):
    """Unstructured over the whole layer by default (``scope="layer"``), as the classic method."""

    name = "magnitude"

    def __init__(
        self, pattern: str = "unstructured", sparsity: float | None = None, scope: Scope = "layer"
    ) -> None:
        super().__init__(pattern, sparsity)
        self.scope = scope

    @torch.no_grad()
    def prune(self, weight: torch.Tensor, calib: LayerStats | None = None) -> PruneResult:
        w = weight.detach().to(torch.float32)
        mask = select_mask(w.abs(), self.pattern, self.scope)
        return PruneResult(mask, w * mask)

    def config(self) -> dict[str, Any]:
        return {**super().config(), "scope": self.scope}
