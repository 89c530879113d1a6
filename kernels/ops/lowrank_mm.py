"""The low-rank product and the composite's sum of products.

A rank-``r`` term costs ``r·(N + K)`` multiply-adds per input row instead of ``N·K``: it runs as
``(x · Rᵀ) · Lᵀ`` with factors kept float32 on CPU (the stored float16 would be converted on
every call) and in their stored dtype on CUDA.
"""

from __future__ import annotations

from typing import TYPE_CHECKING


import torch

from tierlm.kernels.quant.base import Kernel

if TYPE_CHECKING:  # a format owns its kernels (QuantizedTensor.kernel), never the reverse
    from tierlm.kernels.lowrank.tensor import LowRankTensor



class LowRankMatMul:
    """``x [M, K] -> [M, N] float32`` through the two thin factors."""

    def __init__(self, lr: LowRankTensor, device: torch.device | str = "cpu") -> None:
        device = torch.device(device)
        dtype = torch.float32 if device.type == "cpu" else lr.left.dtype
        self.right_t = lr.right.t().contiguous().to(device, dtype)
        self.left_t = lr.left.t().contiguous().to(device, dtype)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(self.right_t.dtype)
        return ((x @ self.right_t) @ self.left_t).float()


class SumMatMul:
    """``base(x) + correction(x)``: the composite forward, ``W`` never formed."""

    def __init__(self, base: Kernel, correction: Kernel) -> None:
        self.base = base
        self.correction = correction

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(x) + self.correction(x)
