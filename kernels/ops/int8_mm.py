"""W8A8 matmul through ``torch._int_mm`` (oneDNN s8s8s32 GEMM where the CPU has VNNI).

CUDA's int8 kernel, and the CPU's where onnxruntime is missing: on an AVX2 CPU without VNNI it
was 2-25x slower than fp32 (bench/results/kernels_matmul.json). On CPU ``_int_mm`` takes any
2-D shapes. On CUDA it wants M > 16 and K, N multiples of 8:
small batches are zero-padded to 17 rows (see :func:`cuda_supports`).
The weight is kept ``[N, K]`` row-major and passed transposed: at batch 1 that layout measured
faster than a contiguous ``[K, N]`` copy (bench/kernels_matmul.py). ``tierlm.kernels`` caps oneDNN at
AVX512_CORE_VNNI before first use (see its ``__init__``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:  # a format owns its kernels (QuantizedTensor.kernel), never the reverse
    from tierlm.kernels.quant.int8 import Int8Tensor

QMAX = 127

_CUDA_MIN_ROWS = 17


def absmax_quantize(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric int8 per row of a 2-D tensor: ``(q int8, scale float32 [rows, 1])``, ``x ≈ q·scale``."""
    scale = (x.abs().amax(-1, keepdim=True) / QMAX).clamp(min=1e-12)
    return torch.round(x / scale).clamp(-QMAX, QMAX).to(torch.int8), scale


def cuda_supports(qt: Int8Tensor) -> bool:
    """Whether CUDA's ``_int_mm`` takes this weight's shape."""
    n, k = qt.shape
    return n % 8 == 0 and k % 8 == 0


class Int8MatMul:
    """``x [M, K] float -> [M, N] float32`` with the numerics of :meth:`Int8Tensor.linear_reference`.

    Runs on the device the tensor is moved to (``device``); inputs must already be there.
    """

    def __init__(self, qt: Int8Tensor, device: torch.device | str = "cpu") -> None:
        self.qt = qt.to(device)
        self.pad_rows = torch.device(device).type == "cuda"

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        qt = self.qt
        m = x.shape[0]
        inliers, outliers = qt.split_input(x.to(torch.float32))
        q, s = absmax_quantize(inliers)
        if self.pad_rows and m < _CUDA_MIN_ROWS:
            q = torch.nn.functional.pad(q, (0, 0, 0, _CUDA_MIN_ROWS - m))
        acc = torch._int_mm(q, qt.qweight.t())[:m]
        # (q·s_x)(q_w·s_w)ᵀ = (q q_wᵀ) · s_x · s_wᵀ: one fused rescale of the int32 accumulator.
        y = acc.to(torch.float32).mul_(s).mul_(qt.scale)
        if outliers is not None:
            y += qt.outlier_product(outliers)
        return y
