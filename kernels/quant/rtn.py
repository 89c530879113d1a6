"""Round-to-nearest int3/int4 with per-group scales (and zero points when asymmetric)."""

from __future__ import annotations

from typing import Any

import torch
from tierlm.kernels.calibration import LayerStats
from tierlm.kernels.quant.base import Quantizer
from tierlm.kernels.quant.group import GroupGrid, GroupQuantTensor


class RTNQuantizer(Quantizer):
    """Data-free baseline: each group of ``group_size`` input columns gets its own grid."""

    name = "rtn"

    def __init__(
        self,
        bits: int = 4,
        group_size: int = 128,
        symmetric: bool = False,
        scale_dtype: str = "float16",
        zero_point: str = "int",
    ) -> None:
        self.grid = GroupGrid(bits, group_size, symmetric, scale_dtype, zero_point)

    def quantize(self, weight: torch.Tensor, calib: LayerStats | None = None) -> GroupQuantTensor:
        return self.grid.rtn(weight.detach().to(torch.float32))

    def config(self) -> dict[str, Any]:
        return {"method": self.name, **self.grid.config()}
