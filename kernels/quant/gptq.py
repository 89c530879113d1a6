"""GPTQ: column-by-column quantization with second-order error feedback (Frantar et al., 2022).

With ``H = 2XᵀX/n`` from calibration inputs and ``U`` the upper Cholesky factor of ``(H+λI)⁻¹``,
input column ``i`` is rounded to the grid and its error ``e = (w_i - q_i) / U_ii`` is pushed onto
the remaining columns through ``U[i, i:]``. Updates are applied lazily: within a block of
``block_size`` columns immediately, to the columns after the block once per block (one matmul).
With ``act_order`` columns are processed by decreasing ``diag(H)``; groups are then formed in
that order and recorded in ``g_idx``, as GPTQ checkpoints do. Group grids are fitted to the
*updated* weights when a group starts, and stored in the RTN format (:class:`GroupQuantTensor`).
"""

from __future__ import annotations

from typing import Any

import torch
from tierlm.kernels.calibration import LayerStats
from tierlm.kernels.hessian import inverse_cholesky, prepare_hessian
from tierlm.kernels.quant.base import Quantizer
from tierlm.kernels.quant.group import (
    GroupGrid,
    GroupQuantTensor,
    quantize_to_grid,
)


class GPTQQuantizer(Quantizer):
    """GPTQ with group-wise grids; ``block_size`` is rounded to a multiple of ``group_size``."""

    name = "gptq"
    needs = frozenset({"hessian"})

    def __init__(
        self,
        bits: int = 4,
        group_size: int = 128,
        symmetric: bool = False,
        scale_dtype: str = "float16",
        block_size: int = 128,
        percdamp: float = 0.01,
        act_order: bool = False,
        zero_point: str = "int",
    ) -> None:
        self.grid = GroupGrid(bits, group_size, symmetric, scale_dtype, zero_point)
        # Whole groups per block, so a group's grid is always fitted to fully updated columns.
        self.block_size = max(group_size, block_size // group_size * group_size)
        self.percdamp = percdamp
        self.act_order = act_order

    @torch.no_grad()
    def quantize(self, weight: torch.Tensor, calib: LayerStats | None = None) -> GroupQuantTensor:
        h, w = prepare_hessian(self._require(calib).hessian(), weight.detach())
        n, k = w.shape
        gs, bits = self.grid.group_size, self.grid.bits
        if k % gs:
            raise ValueError(f"in_features {k} is not a multiple of group_size {gs}")
        perm = torch.argsort(torch.diag(h), descending=True, stable=True) if self.act_order else None
        if perm is not None:
            w, h = w[:, perm], h[perm][:, perm]
        u = inverse_cholesky(h, self.percdamp)

        codes = torch.empty(n, k)
        scales = torch.empty(k // gs, n)
        zeros = torch.empty(k // gs, n)
        for b0 in range(0, k, self.block_size):
            b1 = min(b0 + self.block_size, k)
            wb = w[:, b0:b1].clone()
            errs = torch.empty_like(wb)
            ub = u[b0:b1, b0:b1]
            for i in range(b1 - b0):
                col = b0 + i
                if col % gs == 0:
                    g = col // gs
                    scales[g], zeros[g] = self.grid.params(wb[:, i : i + gs])
                s, z = scales[col // gs], zeros[col // gs]
                q = quantize_to_grid(wb[:, i], s, z, bits)
                codes[:, col] = q
                err = (wb[:, i] - (q - z) * s) / ub[i, i]
                wb[:, i:] -= err.unsqueeze(1) * ub[i, i:].unsqueeze(0)
                errs[:, i] = err
            w[:, b1:] -= errs @ u[b0:b1, b1:]

        g_idx = None
        if perm is not None:
            inv = torch.argsort(perm)
            codes = codes[:, inv]
            g_idx = (torch.arange(k) // gs)[inv]
        return self.grid.pack(codes, scales, zeros, g_idx=g_idx)

    def config(self) -> dict[str, Any]:
        return {
            "method": self.name,
            **self.grid.config(),
            "block_size": self.block_size,
            "percdamp": self.percdamp,
            "act_order": self.act_order,
        }
