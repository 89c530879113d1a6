"""Int3/int4 group-wise matmul on CUDA through torch's tinygemm kernel (``_weight_int4pack_mm``).

tinygemm computes ``x · ((q - 8) · s + z')ᵀ`` in bfloat16 with per-group ``s`` and float offset
``z'``; our grid ``(q - z) · s`` maps onto it with ``z' = (8 - z) · s``. Its packer takes uint8
``[N, K/2]`` with the *even* column in the high nibble (the opposite of our storage). Groups must
be contiguous, so act-order weights are permuted as for the CPU path; int3 codes are widened.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:  # a format owns its kernels (QuantizedTensor.kernel), never the reverse
    from tierlm.kernels.quant.group import GroupQuantTensor

TINYGEMM_GROUP_SIZES = (32, 64, 128, 256)
INNER_K_TILES = 8


def tinygemm_supports(qt: GroupQuantTensor) -> bool:
    """Shape and group constraints of the kernel (K in whole 16·inner-k-tiles chunks)."""
    n, k = qt.shape
    return qt.group_size in TINYGEMM_GROUP_SIZES and k % (16 * INNER_K_TILES) == 0 and n % 8 == 0


class TinyGemmMatMul:
    """``x [M, K] -> [M, N] float32`` on a CUDA device."""

    def __init__(self, qt: GroupQuantTensor, device: torch.device | str) -> None:
        if not tinygemm_supports(qt):
            raise ValueError("weight shape or group size not supported by tinygemm")
        n, k = qt.shape
        codes = qt.codes().to(torch.int32)
        self.perm = None
        if qt.g_idx is not None:
            self.perm = torch.argsort(qt.g_idx.to(torch.int64), stable=True).to(device)
            codes = codes[:, self.perm.cpu()]
        packed = ((codes[:, 0::2] << 4) | codes[:, 1::2]).to(torch.uint8).to(device)
        self.weight = torch.ops.aten._convert_weight_to_int4pack(packed.contiguous(), INNER_K_TILES)
        scales = qt.scales.to(torch.float32)
        offsets = (8 - qt.zeros().to(torch.float32)) * scales
        self.scales_and_zeros = torch.stack([scales, offsets], -1).to(device, torch.bfloat16).contiguous()
        self.input_scale = None if qt.input_scale is None else qt.input_scale.to(device)
        self.group_size = qt.group_size

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.input_scale is not None:
            x = x / self.input_scale
        if self.perm is not None:
            x = x[:, self.perm]
        x = x.to(torch.bfloat16).contiguous()
        return torch.ops.aten._weight_int4pack_mm(
            x, self.weight, self.group_size, self.scales_and_zeros
        ).float()
