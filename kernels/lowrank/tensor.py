"""A rank-``r`` weight ``W ≈ L · R`` stored as its two thin factors (format ``lowrank``)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from tierlm.kernels.quant.base import Kernel, QuantizedTensor
from tierlm.kernels.quant.group import SCALE_DTYPES

_DTYPE_NAMES = {v: k for k, v in SCALE_DTYPES.items()}


@dataclass(eq=False)
class LowRankTensor(QuantizedTensor):
    """``left [out, r]`` times ``right [r, in]``; a layer runs ``(x · rightᵀ) · leftᵀ``."""

    format = "lowrank"

    left: torch.Tensor
    right: torch.Tensor

    def __post_init__(self) -> None:
        if self.left.shape[1] != self.right.shape[0]:
            raise ValueError(
                f"factor shapes {tuple(self.left.shape)} and {tuple(self.right.shape)} do not chain"
            )

    @property
    def shape(self) -> tuple[int, int]:
        return self.left.shape[0], self.right.shape[1]

    @property
    def rank(self) -> int:
        return self.left.shape[1]

    def kernel(self, device: torch.device, int4_accuracy_level: int = 4) -> Kernel | None:
        from tierlm.kernels.ops.lowrank_mm import LowRankMatMul

        return LowRankMatMul(self, device)

    @classmethod
    def cat_rows(cls, parts: Sequence[QuantizedTensor]) -> LowRankTensor:
        """``[L₁ 0; 0 L₂] · [R₁; R₂]``: the factors stacked, the left ones block-diagonal."""
        return cls(torch.block_diag(*(p.left for p in parts)), torch.cat([p.right for p in parts]))

    def dequantize(self) -> torch.Tensor:
        return self.left.to(torch.float32) @ self.right.to(torch.float32)

    def dequantize_rows(self, rows: torch.Tensor) -> torch.Tensor:
        flat = rows.reshape(-1).to(torch.int64)
        out = self.left[flat].to(torch.float32) @ self.right.to(torch.float32)
        return out.reshape(*rows.shape, -1)

    def linear_reference(self, x: torch.Tensor) -> torch.Tensor:
        # Two thin products: the point of the format is never forming the [out, in] matrix.
        return (x @ self.right.to(x.dtype).t()) @ self.left.to(x.dtype).t()

    def tensors(self) -> dict[str, torch.Tensor]:
        return {"left": self.left, "right": self.right}

    def metadata(self) -> dict[str, Any]:
        return {"rank": self.rank, "dtype": _DTYPE_NAMES[self.left.dtype]}

    @classmethod
    def from_parts(cls, tensors: Mapping[str, torch.Tensor], meta: Mapping[str, Any]) -> LowRankTensor:
        return cls(tensors["left"], tensors["right"])
