"""NF4 with double quantization of the block scales (QLoRA, Dettmers et al., 2023).

Each block of ``block_size`` consecutive weights of a row is divided by its absmax and rounded to
the nearest of 16 NormalFloat levels (quantiles of N(0,1), with an exact zero). Double
quantization stores the per-block absmax values themselves in 8 bits: their mean is subtracted and
the remainder is absmax-quantized to int8 in blocks of ``dq_block_size`` with a float32 scale
each. QLoRA uses an 8-bit *float* code for that second step; the linear int8 code here costs the
same bytes and its error is bounded by the tests.

Layout: ``codes`` uint8 ``[N, K/2]``, two codes per byte, low nibble = even column (the same
nibble order as the int4 formats, unlike bitsandbytes' high-nibble-first); then either
``absmax`` float32 ``[N·K/block]`` or ``absmax_q`` int8, ``absmax_scale`` float32
``[ceil(N·K/block / dq_block)]`` and ``absmax_offset`` float32 ``[1]``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

import torch
from tierlm.kernels.calibration import LayerStats
from tierlm.kernels.quant.base import QuantizedTensor, Quantizer

NF4_LEVELS = torch.tensor(
    [
        -1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453,
        -0.28444138169288635, -0.18477343022823029, -0.09105003625154495, 0.0,
        0.07958029955625534, 0.16093020141124725, 0.24611230194568634, 0.33791524171829224,
        0.44070982933044434, 0.5626170039176941, 0.7229568362236023, 1.0,
    ]
)  # fmt: skip
#: Largest distance from any point of [-1, 1] to its nearest level (half the widest gap).
NF4_MAX_HALF_GAP = float((NF4_LEVELS[1:] - NF4_LEVELS[:-1]).max() / 2)


def _pack_nibbles(codes: torch.Tensor) -> torch.Tensor:
    return (codes[..., 0::2] | (codes[..., 1::2] << 4)).to(torch.uint8)


def _unpack_nibbles(packed: torch.Tensor) -> torch.Tensor:
    return torch.stack([packed & 0xF, packed >> 4], -1).reshape(*packed.shape[:-1], -1)


@dataclass(eq=False)
class NF4Tensor(QuantizedTensor):
    """NF4 weight with (optionally double-quantized) per-block absmax."""

    format = "nf4"

    codes: torch.Tensor
    block_size: int
    dq_block_size: int
    absmax: torch.Tensor | None = None
    absmax_q: torch.Tensor | None = None
    absmax_scale: torch.Tensor | None = None
    absmax_offset: torch.Tensor | None = None

    @property
    def shape(self) -> tuple[int, int]:
        return self.codes.shape[0], self.codes.shape[1] * 2

    def block_absmax(self) -> torch.Tensor:
        """Per-block absmax as used for dequantization ``[N·K/block]``."""
        if self.absmax is not None:
            return self.absmax
        idx = torch.arange(self.absmax_q.numel(), device=self.absmax_q.device) // self.dq_block_size
        return self.absmax_q.to(torch.float32) * self.absmax_scale[idx] + self.absmax_offset

    def _dequant(self, codes: torch.Tensor, absmax: torch.Tensor) -> torch.Tensor:
        n, k = codes.shape[0], codes.shape[1] * 2
        levels = NF4_LEVELS.to(codes.device)[_unpack_nibbles(codes).to(torch.int64)]
        return (levels.reshape(n, k // self.block_size, self.block_size) * absmax.reshape(n, -1, 1)).reshape(
            n, k
        )

    def dequantize(self) -> torch.Tensor:
        return self._dequant(self.codes, self.block_absmax())

    def dequantize_rows(self, rows: torch.Tensor) -> torch.Tensor:
        flat = rows.reshape(-1).to(torch.int64)
        absmax = self.block_absmax().reshape(self.shape[0], -1)[flat]
        return self._dequant(self.codes[flat], absmax).reshape(*rows.shape, -1)

    def tensors(self) -> dict[str, torch.Tensor]:
        out = {"codes": self.codes}
        if self.absmax is not None:
            out["absmax"] = self.absmax
        else:
            out.update(
                absmax_q=self.absmax_q, absmax_scale=self.absmax_scale, absmax_offset=self.absmax_offset
            )
        return out

    def metadata(self) -> dict[str, Any]:
        return {"block_size": self.block_size, "dq_block_size": self.dq_block_size}

    @classmethod
    def from_parts(cls, tensors: Mapping[str, torch.Tensor], meta: Mapping[str, Any]) -> "NF4Tensor":
        return cls(
            codes=tensors["codes"],
            block_size=int(meta["block_size"]),
            dq_block_size=int(meta["dq_block_size"]),
            absmax=tensors.get("absmax"),
            absmax_q=tensors.get("absmax_q"),
            absmax_scale=tensors.get("absmax_scale"),
            absmax_offset=tensors.get("absmax_offset"),
        )


class NF4Quantizer(Quantizer):
    """Data-free NF4; ``double_quant`` stores the block absmax values in 8 bits."""

    name = "nf4"

    def __init__(self, block_size: int = 64, double_quant: bool = True, dq_block_size: int = 256) -> None:
        if block_size <= 0 or block_size % 2:
            raise ValueError("block_size must be a positive even number")
        self.block_size = block_size
        self.double_quant = double_quant
        self.dq_block_size = dq_block_size

    @torch.no_grad()
    def quantize(self, weight: torch.Tensor, calib: LayerStats | None = None) -> NF4Tensor:
        w = weight.detach().to(torch.float32)
        n, k = w.shape
        if k % self.block_size:
            raise ValueError(f"in_features {k} is not a multiple of block_size {self.block_size}")
        blocks = w.reshape(n, k // self.block_size, self.block_size)
        absmax = blocks.abs().amax(-1).reshape(-1)
        parts: dict[str, torch.Tensor] = {}
        if self.double_quant:
            offset = absmax.mean()
            centred = absmax - offset
            pad = -centred.numel() % self.dq_block_size
            chunks = torch.nn.functional.pad(centred, (0, pad)).reshape(-1, self.dq_block_size)
            scale = (chunks.abs().amax(-1) / 127).clamp(min=1e-12)
            q = (
                torch.round(chunks / scale.unsqueeze(1))
                .clamp(-127, 127)
                .to(torch.int8)
                .reshape(-1)[: absmax.numel()]
            )
            parts = {"absmax_q": q, "absmax_scale": scale, "absmax_offset": offset.reshape(1)}
            absmax = q.to(torch.float32) * scale[torch.arange(q.numel()) // self.dq_block_size] + offset
        else:
            parts = {"absmax": absmax}
        # Normalise by the absmax that will be *stored*, so codes match what dequantize sees.
        denom = absmax.clamp(min=1e-12).reshape(n, -1, 1)
        normed = (blocks / denom).clamp(-1, 1).reshape(n, k)
        mids = (NF4_LEVELS[1:] + NF4_LEVELS[:-1]) / 2
        codes = torch.bucketize(normed, mids).to(torch.uint8)
        return NF4Tensor(_pack_nibbles(codes), self.block_size, self.dq_block_size, **parts)

    def config(self) -> dict[str, Any]:
        return {
            "method": self.name,
            "block_size": self.block_size,
            "double_quant": self.double_quant,
            "dq_block_size": self.dq_block_size,
        }
