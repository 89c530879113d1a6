"""AWQ: activation-aware scaling before group-wise round-to-nearest (Lin et al., 2023).

Input channels that carry large activations matter more, so their weights are scaled up by
``s_j = mean|X_j|^α`` before quantization (and the activations divided by ``s``), which gives
them finer effective resolution. ``α`` is chosen per layer by grid search to minimise the layer's
output error ``‖X Wᵀ - (X/s) Q(W·s)ᵀ‖²`` on sampled calibration rows; ``α = 0`` is plain RTN, so
on those rows AWQ is never worse than RTN.

Then, as AWQ does, each group's range is shrunk by the factor (1, 0.95, ..., ``min_clip``) that
minimises that group's share of the output error on the samples (``clip_search``), which trades
clipping a few extreme weights for a finer grid for all the others.

The scale stays in the tensor as ``input_scale`` (applied to ``x`` at run time). A pipeline that
can fold ``1/s`` into the preceding norm or linear layer may do so and drop it.
"""

from __future__ import annotations

from typing import Any

import torch
from tierlm.kernels.calibration import LayerStats
from tierlm.kernels.quant.base import Quantizer
from tierlm.kernels.quant.group import GroupGrid, GroupQuantTensor, group_rtn, quantize_to_grid


def fake_group_rtn(w: torch.Tensor, grid: GroupGrid) -> torch.Tensor:
    """Round-trip ``w`` through the group grid without packing (the search's inner loop)."""
    codes, scales, zeros = group_rtn(w, grid.bits, grid.group_size, grid.symmetric, grid.torch_scale_dtype, float_zero=grid.float_zero)
    n, k = w.shape
    g = grid.group_size
    deq = (codes.reshape(n, k // g, g) - zeros.t().unsqueeze(-1)) * scales.t().unsqueeze(-1)
    return deq.reshape(n, k)


class AWQQuantizer(Quantizer):
    """Grid search over ``α ∈ {0, 1/n_grid, ..., (n_grid-1)/n_grid}`` per layer."""

    name = "awq"
    needs = frozenset({"abs_mean", "samples"})

    def __init__(
        self,
        bits: int = 4,
        group_size: int = 128,
        symmetric: bool = False,
        scale_dtype: str = "float16",
        n_grid: int = 20,
        clip_search: bool = True,
        min_clip: float = 0.5,
        clip_rows: int = 512,
        zero_point: str = "int",
    ) -> None:
        if n_grid < 1:
            raise ValueError("n_grid must be at least 1")
        if not 0 < min_clip <= 1:
            raise ValueError("min_clip must lie in (0, 1]")
        self.grid = GroupGrid(bits, group_size, symmetric, scale_dtype, zero_point)
        self.n_grid = n_grid
        self.clip_search = clip_search
        self.min_clip = min_clip
        self.clip_rows = clip_rows  # sampled rows the clipping search evaluates (its cost is linear)
        self.last_alpha: float | None = None  # chosen α of the latest call, for reports

    @torch.no_grad()
    def quantize(self, weight: torch.Tensor, calib: LayerStats | None = None) -> GroupQuantTensor:
        calib = self._require(calib)
        w = weight.detach().to(torch.float32)
        x = calib.samples
        reference = x @ w.t()
        # Dead channels would give s = 0; keep them at the smallest live magnitude instead.
        mean_abs = calib.abs_mean.clamp(min=max(float(calib.abs_mean.max()) * 1e-6, 1e-12))
        grid = self.grid
        best: tuple[float, float, torch.Tensor] | None = None
        for i in range(self.n_grid):
            alpha = i / self.n_grid
            s = mean_abs.pow(alpha)
            s = s / (s.max() * s.min()).sqrt()  # centre the scales around 1, as AWQ does
            w_hat = fake_group_rtn(w * s, grid) / s
            err = float(((x @ w_hat.t()) - reference).pow(2).sum())
            if best is None or err < best[0]:
                best = (err, alpha, s)
        assert best is not None
        _, alpha, s = best
        self.last_alpha = alpha
        clip = self._search_clip(w * s, x[: self.clip_rows] / s) if self.clip_search else None
        return grid.rtn(w * s, input_scale=None if alpha == 0 else s, clip=clip)

    def _search_clip(self, w: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Best range factor ``[N, G]`` per output row and group (ratio 1 is a candidate)."""
        n, k = w.shape
        gs, grid = self.grid.group_size, self.grid
        n_steps = int(round((1 - self.min_clip) / 0.05)) + 1
        ratios = [1 - 0.05 * i for i in range(n_steps)]
        best_clip = torch.ones(n, k // gs)
        for g in range(k // gs):
            wg, xg = w[:, g * gs : (g + 1) * gs], x[:, g * gs : (g + 1) * gs]
            best_err = torch.full((n,), float("inf"))
            for ratio in ratios:
                scale, zero = grid.params(wg, ratio)
                deq = (
                    quantize_to_grid(wg, scale[:, None], zero[:, None], grid.bits) - zero[:, None]
                ) * scale[:, None]
                err = (xg @ (wg - deq).t()).pow(2).sum(0)
                better = err < best_err
                best_err = torch.where(better, err, best_err)
                best_clip[better, g] = ratio
        return best_clip

    def config(self) -> dict[str, Any]:
        return {
            "method": self.name,
            **self.grid.config(),
            "n_grid": self.n_grid,
            "clip_search": self.clip_search,
            "min_clip": self.min_clip,
            "clip_rows": self.clip_rows,
        }
