"""W8A8 matmul through ``torch._int_mm`` (oneDNN s8s8s32 GEMM; VNNI on this CPU).

On CPU ``_int_mm`` takes any 2-D shapes (unlike CUDA, which wants M > 16 and multiples of 8).
The weight is kept ``[N, K]`` row-major and passed transposed: that layout measured ~1.4x
faster at batch 1 than a contiguous ``[K, N]`` copy. ``tierlm.kernels`` caps oneDNN at
AVX512_CORE_VNNI before first use (see its ``__init__``).
"""

from __future__ import annotations

import torch

from tierlm.kernels.quant.int8 import Int8Tensor, absmax_quantize


class Int8MatMul:
    """``x [M, K] float -> [M, N] float32`` with the numerics of :meth:`Int8Tensor.linear_reference`."""

    def __init__(self, qt: Int8Tensor) -> None:
        self.qt = qt

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        qt = self.qt
        inliers, outliers = qt.split_input(x.to(torch.float32))
        q, s = absmax_quantize(inliers)
        acc = torch._int_mm(q, qt.qweight.t())
        # (q·s_x)(q_w·s_w)ᵀ = (q q_wᵀ) · s_x · s_wᵀ: one fused rescale of the int32 accumulator.
        y = acc.to(torch.float32).mul_(s).mul_(qt.scale)
        if outliers is not None:
            y += qt.outlier_product(outliers)
        return y
