"""SparseGPT (Frantar & Alistarh, 2023): OBS pruning with reconstruction, optionally quantizing.

The sweep is GPTQ's (see :mod:`tierlm.kernels.quant.gptq`) with pruning folded in: input
columns are visited in order, each column's pruned weights are set to zero (and, with a grid,
its kept weights rounded), and the error ``(w - q) / U_ii`` is pushed onto the not-yet-visited
columns through row ``i`` of ``U`` (upper Cholesky factor of ``(H + λI)⁻¹``). The mask is
chosen adaptively as the sweep goes, by the OBS saliency ``w² / U_ii²`` of the *updated*
weights: for unstructured sparsity once per block of ``block_size`` columns (the block's weights
compete together, as upstream), for N:M at the start of every group of ``M`` columns.

:func:`sparsegpt_sweep` also takes a fixed mask, which turns it into "GPTQ that keeps a given
sparsity pattern": the composite uses that to quantize a Wanda- or magnitude-pruned weight
without error feedback filling the pruned holes back in.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from tierlm.kernels.calibration import LayerStats
from tierlm.kernels.hessian import inverse_cholesky, prepare_hessian
from tierlm.kernels.quant.group import GroupGrid, quantize_to_grid
from tierlm.kernels.sparse.base import Pruner, PruneResult
from tierlm.kernels.sparse.pattern import SparsityPattern, select_mask


@dataclass(frozen=True)
class SweepResult:
    """Mask and reconstructed weight; with a grid also ``codes [N,K]``, ``scales``/``zeros [G,N]``.

    Pruned positions carry code ``zero`` (which dequantizes to exactly 0).
    """

    mask: torch.Tensor
    weight: torch.Tensor
    codes: torch.Tensor | None = None
    scales: torch.Tensor | None = None
    zeros: torch.Tensor | None = None


@torch.no_grad()
def sparsegpt_sweep(
    weight: torch.Tensor,
    hessian: torch.Tensor,
    pattern: SparsityPattern | None = None,
    mask: torch.Tensor | None = None,
    grid: GroupGrid | None = None,
    block_size: int = 128,
    percdamp: float = 0.01,
) -> SweepResult:
    """One OBS sweep over ``weight [N, K]``; give exactly one of ``pattern`` or ``mask``."""
    if (pattern is None) == (mask is None):
        raise ValueError("give a pattern to select the mask, or a fixed mask, not both")
    h, w = prepare_hessian(hessian, weight.detach())
    n, k = w.shape
    step = 1
    if grid is not None:
        if k % grid.group_size:
            raise ValueError(f"in_features {k} is not a multiple of group_size {grid.group_size}")
        step = grid.group_size
    if pattern is not None:
        pattern.check_shape(k)
        step = max(step, pattern.m)  # both are powers of two in practice; keep blocks whole
    # Whole groups (and whole N:M runs) per block, so grids and masks see fully updated columns.
    block_size = max(step, block_size // step * step)
    u = inverse_cholesky(h, percdamp)

    keep = torch.ones(n, k, dtype=torch.bool) if mask is None else mask.to(torch.bool).clone()
    codes = scales = zeros = None
    if grid is not None:
        codes = torch.empty(n, k)
        scales = torch.empty(k // grid.group_size, n)
        zeros = torch.empty(k // grid.group_size, n)
    for b0 in range(0, k, block_size):
        b1 = min(b0 + block_size, k)
        wb = w[:, b0:b1].clone()
        ub = u[b0:b1, b0:b1]
        udiag = torch.diag(ub)
        if pattern is not None and not pattern.structured:
            keep[:, b0:b1] = select_mask(wb.pow(2) / udiag.pow(2), pattern, scope="layer")
        errs = torch.empty_like(wb)
        for i in range(b1 - b0):
            col = b0 + i
            if pattern is not None and pattern.structured and i % pattern.m == 0:
                sal = wb[:, i : i + pattern.m].pow(2) / udiag[i : i + pattern.m].pow(2)
                keep[:, col : col + pattern.m] = select_mask(sal, pattern)
            kept = keep[:, col]
            q = wb[:, i] * kept
            if grid is not None:
                if col % grid.group_size == 0:
                    g = col // grid.group_size
                    group = wb[:, i : i + grid.group_size]
                    scales[g], zeros[g] = grid.params(group)
                s, z = scales[col // grid.group_size], zeros[col // grid.group_size]
                c = torch.where(kept, quantize_to_grid(q, s, z, grid.bits), z)
                codes[:, col] = c
                q = (c - z) * s
            err = (wb[:, i] - q) / ub[i, i]
            wb[:, i:] -= err.unsqueeze(1) * ub[i, i:].unsqueeze(0)
            wb[:, i] = q
            errs[:, i] = err
        w[:, b0:b1] = wb
        w[:, b1:] -= errs @ u[b0:b1, b1:]
    return SweepResult(keep, w * keep, codes, scales, zeros)


class SparseGPTPruner(Pruner):
    """SparseGPT; :meth:`sweep` with a grid also quantizes (the composite's ``gptq`` base uses it)."""

    name = "sparsegpt"
    needs = frozenset({"hessian"})

    def __init__(
        self,
        pattern: str = "unstructured",
        sparsity: float | None = None,
        block_size: int = 128,
        percdamp: float = 0.01,
    ) -> None:
        super().__init__(pattern, sparsity)
        self.block_size = block_size
        self.percdamp = percdamp

    def sweep(
        self, weight: torch.Tensor, calib: LayerStats | None, grid: GroupGrid | None = None
    ) -> SweepResult:
        """The full sweep, quantizing the kept weights on ``grid`` in the same pass when given."""
        h = self._require(calib).hessian()
        return sparsegpt_sweep(
            weight, h, self.pattern, grid=grid, block_size=self.block_size, percdamp=self.percdamp
        )

    def prune(self, weight: torch.Tensor, calib: LayerStats | None = None) -> PruneResult:
        result = self.sweep(weight, calib)
        return PruneResult(result.mask, result.weight)

    def config(self) -> dict[str, Any]:
        return {**super().config(), "block_size": self.block_size, "percdamp": self.percdamp}
