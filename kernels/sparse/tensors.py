"""Stored sparse weights: a mask encoding plus the kept values (float, or integer codes).

Kept values are always stored flat, in row-major order of their positions, so any mask encoding
can sit under either value kind. Mask encodings (:class:`SparseLayout`):

- ``nm``: for N:M patterns, the N kept positions of each group of M as ``ceil(log2 M)``-bit
  indices (2:4 -> two 2-bit indices per 4 weights, NVIDIA's metadata density), packed densely
  by :func:`~tierlm.kernels.packing.pack_bits`. Tensor ``indices`` uint8.
- ``bitmask``: one bit per weight (row-major), tensor ``bitmask`` uint8. The compact choice for
  unstructured masks above ~6% density.
- ``csr``: ``crow`` int32 ``[N+1]`` and ``col`` int16 (int32 when ``in_features > 32768``);
  compact only at high sparsity, and the layout the CPU sparse matmul consumes.

:class:`SparseTensor` (format ``sparse``) keeps float values (float16 by default).
:class:`SparseQuantTensor` (format ``sparse_int``) keeps ``bits``-bit codes of the kept weights
with group-wise scales and zero points in the GPTQ layout of
:class:`~tierlm.kernels.quant.group.GroupQuantTensor`; pruned positions are implied code
``zero``, which dequantizes to exactly 0, so :meth:`SparseQuantTensor.to_group_quant` hands the
int4 fast kernels an ordinary dense-codes tensor.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Any, Literal

import torch
from tierlm.kernels.packing import pack_bits, unpack_bits
from tierlm.kernels.quant.base import Kernel, QuantizedTensor
from tierlm.kernels.quant.group import SCALE_DTYPES, GroupQuantTensor, _pack, _unpack
from tierlm.kernels.sparse.pattern import SparsityPattern

Encoding = Literal["nm", "bitmask", "csr"]
ENCODINGS = ("nm", "bitmask", "csr")
_DTYPE_NAMES = {v: k for k, v in SCALE_DTYPES.items()}


def _index_bits(m: int) -> int:
    return max(1, math.ceil(math.log2(m)))


def default_encoding(pattern: SparsityPattern) -> Encoding:
    """``nm`` for N:M patterns; for unstructured, whichever of bitmask/CSR is smaller."""
    if pattern.structured:
        return "nm"
    # CSR pays 16 bits per kept weight, the bitmask 1 bit per weight.
    return "csr" if (1 - pattern.sparsity) * 16 < 1 else "bitmask"


@dataclass(eq=False)
class SparseLayout:
    """Where the kept weights of an ``[out, in]`` matrix are; see the module docstring."""

    encoding: Encoding
    shape: tuple[int, int]
    parts: dict[str, torch.Tensor]
    nnz: int
    n: int = 0
    m: int = 0

    @classmethod
    def encode(
        cls, mask: torch.Tensor, encoding: Encoding, pattern: SparsityPattern | None = None
    ) -> SparseLayout:
        """Encode a boolean mask; ``nm`` needs the N:M ``pattern`` and checks the mask obeys it."""
        rows, cols = mask.shape
        mask = mask.to(torch.bool)
        n = m = 0
        if pattern is not None and pattern.structured:
            # Any encoding may hold an N:M mask; the pattern is checked and kept in the metadata.
            n, m = pattern.n, pattern.m
            pattern.check_shape(cols)
            if not (mask.reshape(rows, cols // m, m).sum(-1) == n).all():
                raise ValueError(f"mask does not keep exactly {n} of every {m}")
        nnz = int(mask.sum())
        if encoding == "nm":
            if not m:
                raise ValueError("the nm encoding needs an N:M pattern")
            # Boolean indexing walks row-major, so positions come out ascending within each group
            # (and an expanded uint8 arange keeps this at one byte per kept weight).
            idx = torch.arange(m, dtype=torch.uint8).expand(rows, cols // m, m)[
                mask.reshape(rows, cols // m, m)
            ]
            parts = {"indices": pack_bits(idx, _index_bits(m))}
        elif encoding == "bitmask":
            parts = {"bitmask": pack_bits(mask.reshape(-1).to(torch.uint8), 1)}
        elif encoding == "csr":
            crow, col = _csr_of(mask, torch.int16 if cols <= 32768 else torch.int32)
            parts = {"crow": crow, "col": col}
        else:
            raise ValueError(f"encoding must be one of {ENCODINGS}, got {encoding!r}")
        return cls(encoding, (rows, cols), parts, nnz, n, m)

    def decode(self) -> torch.Tensor:
        """The boolean mask ``[out, in]``."""
        rows, cols = self.shape
        mask = torch.zeros(rows, cols, dtype=torch.bool, device=self.device)
        if self.encoding == "nm":
            n_groups = cols // self.m
            idx = unpack_bits(self.parts["indices"], _index_bits(self.m), self.nnz).to(torch.int64)
            starts = torch.arange(n_groups, device=self.device) * self.m
            pos = idx.reshape(rows, n_groups, self.n) + starts.reshape(1, -1, 1)
            mask.scatter_(1, pos.reshape(rows, -1), True)
        elif self.encoding == "bitmask":
            mask = unpack_bits(self.parts["bitmask"], 1, rows * cols).to(torch.bool).reshape(rows, cols)
        else:
            crow = self.parts["crow"].to(torch.int64)
            row = torch.repeat_interleave(torch.arange(rows, device=self.device), crow.diff())
            mask[row, self.parts["col"].to(torch.int64)] = True
        return mask

    @cached_property
    def row_pointers(self) -> torch.Tensor:
        """int64 ``[out + 1]``: row ``r``'s kept values are ``values[ptr[r]:ptr[r+1]]``.

        N:M rows all keep the same count and CSR stores the pointers; a bitmask is decoded once
        (then cached on this object, not stored).
        """
        rows, cols = self.shape
        if self.encoding == "nm":
            return torch.arange(rows + 1, device=self.device) * (cols // self.m * self.n)
        if self.encoding == "csr":
            return self.parts["crow"].to(torch.int64)
        ptr = torch.zeros(rows + 1, dtype=torch.int64, device=self.device)
        ptr[1:] = self.decode().sum(1).cumsum(0)
        return ptr

    def decode_rows(self, rows: torch.Tensor) -> torch.Tensor:
        """Mask rows ``[len(rows), in]`` for a flat int64 ``rows`` (e.g. embedding lookups)."""
        cols = self.shape[1]
        out = torch.zeros(rows.numel(), cols, dtype=torch.bool, device=self.device)
        for i, r in enumerate(rows.tolist()):
            if self.encoding == "nm":
                per_row = cols // self.m * self.n
                idx = unpack_bits(self.parts["indices"], _index_bits(self.m), per_row, start=r * per_row)
                starts = torch.arange(0, cols, self.m, device=self.device).repeat_interleave(self.n)
                out[i, idx.to(torch.int64) + starts] = True
            elif self.encoding == "bitmask":
                out[i] = unpack_bits(self.parts["bitmask"], 1, cols, start=r * cols).to(torch.bool)
            else:
                ptr = self.row_pointers
                out[i, self.parts["col"][ptr[r] : ptr[r + 1]].to(torch.int64)] = True
        return out

    def csr(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(crow, col)`` as int32, the index layout the CSR matmul takes, from any encoding."""
        if self.encoding == "csr":
            return self.parts["crow"], self.parts["col"].to(torch.int32)
        return _csr_of(self.decode(), torch.int32)

    @property
    def device(self) -> torch.device:
        return next(iter(self.parts.values())).device

    @property
    def sparsity(self) -> float:
        return 1.0 - self.nnz / (self.shape[0] * self.shape[1])

    def metadata(self) -> dict[str, Any]:
        """Encoding, shape, kept count, pattern (``"N:M"`` or ``"unstructured"``) and sparsity."""
        return {
            "encoding": self.encoding,
            "shape": list(self.shape),
            "nnz": self.nnz,
            "pattern": f"{self.n}:{self.m}" if self.m else "unstructured",
            "sparsity": self.sparsity,
        }

    @classmethod
    def from_parts(cls, tensors: Mapping[str, torch.Tensor], meta: Mapping[str, Any]) -> SparseLayout:
        names = {"nm": ("indices",), "bitmask": ("bitmask",), "csr": ("crow", "col")}[meta["encoding"]]
        n = m = 0
        if meta["pattern"] != "unstructured":
            n, m = (int(v) for v in meta["pattern"].split(":"))
        parts = {k: tensors[k] for k in names}
        return cls(meta["encoding"], tuple(meta["shape"]), parts, int(meta["nnz"]), n, m)


def _csr_of(mask: torch.Tensor, col_dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """Row pointers (int32) and column indices (``col_dtype``, row-major) of a boolean mask."""
    rows, cols = mask.shape
    crow = torch.zeros(rows + 1, dtype=torch.int32, device=mask.device)
    crow[1:] = mask.sum(1).cumsum(0)
    col = torch.arange(cols, dtype=col_dtype, device=mask.device).expand(rows, cols)[mask]
    return crow, col


def _scatter(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Dense tensor with ``values`` (row-major order) at ``mask`` and zeros elsewhere."""
    out = torch.zeros(mask.shape, dtype=values.dtype, device=values.device)
    out[mask] = values
    return out


@dataclass(eq=False)
class SparseTensor(QuantizedTensor):
    """Float kept values under a :class:`SparseLayout`."""

    format = "sparse"

    layout: SparseLayout
    values: torch.Tensor

    @classmethod
    def from_dense(
        cls,
        weight: torch.Tensor,
        mask: torch.Tensor,
        pattern: SparsityPattern | None = None,
        encoding: Encoding | None = None,
        value_dtype: str = "float16",
    ) -> SparseTensor:
        """Store ``weight`` at ``mask`` (entries outside the mask are dropped)."""
        if encoding is None:
            encoding = default_encoding(pattern) if pattern is not None else "bitmask"
        layout = SparseLayout.encode(mask, encoding, pattern)
        # Boolean indexing walks row-major: the storage order of kept values.
        values = weight.detach().to(torch.float32)[mask.to(torch.bool)]
        return cls(layout, values.to(SCALE_DTYPES[value_dtype]))

    @property
    def shape(self) -> tuple[int, int]:
        return self.layout.shape

    def kernel(self, device: torch.device, int4_accuracy_level: int = 4) -> Kernel | None:
        """CPU: CSR only where it beats dense (:func:`~tierlm.kernels.ops.sparse_mm.cpu_sparse_kernel`);
        CUDA: 2:4 tensor cores where the pattern and shape allow."""
        from tierlm.kernels.ops import sparse_mm

        if device.type == "cpu":
            return sparse_mm.cpu_sparse_kernel(self)
        if sparse_mm.semi_structured_supports(self, device):
            return sparse_mm.SemiStructuredMatMul(self, device)
        return None

    def dequantize(self) -> torch.Tensor:
        return _scatter(self.values.to(torch.float32), self.layout.decode())

    def dequantize_rows(self, rows: torch.Tensor) -> torch.Tensor:
        flat = rows.reshape(-1).to(torch.int64)
        ptr = self.layout.row_pointers
        kept = [self.values[ptr[r] : ptr[r + 1]] for r in flat.tolist()]
        out = _scatter(torch.cat(kept).to(torch.float32), self.layout.decode_rows(flat))
        return out.reshape(*rows.shape, -1)

    def tensors(self) -> dict[str, torch.Tensor]:
        return {**self.layout.parts, "values": self.values}

    def metadata(self) -> dict[str, Any]:
        return {**self.layout.metadata(), "value_dtype": _DTYPE_NAMES[self.values.dtype]}

    @classmethod
    def from_parts(cls, tensors: Mapping[str, torch.Tensor], meta: Mapping[str, Any]) -> SparseTensor:
        return cls(SparseLayout.from_parts(tensors, meta), tensors["values"])


@dataclass(eq=False)
class SparseQuantTensor(QuantizedTensor):
    """``bits``-bit codes of the kept weights with group grids; see the module docstring."""

    format = "sparse_int"

    layout: SparseLayout
    qvalues: torch.Tensor  # pack_bits of the kept codes, row-major
    qzeros: torch.Tensor
    scales: torch.Tensor
    bits: int
    group_size: int
    symmetric: bool

    @classmethod
    def from_codes(
        cls,
        codes: torch.Tensor,
        scales: torch.Tensor,
        zeros: torch.Tensor,
        mask: torch.Tensor,
        *,
        bits: int,
        group_size: int,
        symmetric: bool,
        scale_dtype: torch.dtype = torch.float16,
        pattern: SparsityPattern | None = None,
        encoding: Encoding | None = None,
    ) -> SparseQuantTensor:
        """Store dense ``codes [N,K]`` at ``mask`` with ``scales``/``zeros`` ``[G, N]``."""
        if encoding is None:
            encoding = default_encoding(pattern) if pattern is not None else "bitmask"
        mask = mask.to(torch.bool)
        layout = SparseLayout.encode(mask, encoding, pattern)
        kept = codes.to(torch.int64)[mask]
        return cls(
            layout=layout,
            qvalues=pack_bits(kept, bits),
            qzeros=_pack(zeros.to(torch.int64), bits, 1),
            scales=scales.to(scale_dtype),
            bits=bits,
            group_size=group_size,
            symmetric=symmetric,
        )

    @property
    def shape(self) -> tuple[int, int]:
        return self.layout.shape

    def kernel(self, device: torch.device, int4_accuracy_level: int = 4) -> Kernel | None:
        """The dense int4 kernels on the codes: a pruned code is its group's zero point, so the
        product is exact."""
        return self.to_group_quant().kernel(device, int4_accuracy_level)

    def kernel_with_lowrank(self, device: torch.device, lowrank, int4_accuracy_level: int = 4) -> Kernel | None:
        return self.to_group_quant().kernel_with_lowrank(device, lowrank, int4_accuracy_level)

    @classmethod
    def cat_rows(cls, parts: Sequence[QuantizedTensor]) -> GroupQuantTensor | None:
        """The parts as dense codes, joined (the kernels run dense codes anyway)."""
        return GroupQuantTensor.cat_rows([p.to_group_quant() for p in parts])

    def zeros(self) -> torch.Tensor:
        """Zero points ``[G, N]`` (uint8)."""
        return _unpack(self.qzeros, self.bits, 1)

    def codes(self) -> torch.Tensor:
        """Dense codes ``[N, K]`` (uint8), pruned positions at their group's zero point."""
        mask = self.layout.decode()
        kept = unpack_bits(self.qvalues, self.bits, self.layout.nnz)
        group = torch.arange(self.shape[1], device=mask.device) // self.group_size
        return _scatter(kept, mask).where(mask, self.zeros()[group].t())

    def to_group_quant(self) -> GroupQuantTensor:
        """The same weight as dense codes (what the int4 kernels run; pruned codes = zero point)."""
        return GroupQuantTensor.from_codes(
            self.codes(),
            self.scales,
            self.zeros(),
            bits=self.bits,
            group_size=self.group_size,
            symmetric=self.symmetric,
            scale_dtype=self.scales.dtype,
        )

    def dequantize(self) -> torch.Tensor:
        return self.to_group_quant().dequantize()

    def dequantize_rows(self, rows: torch.Tensor) -> torch.Tensor:
        flat = rows.reshape(-1).to(torch.int64)
        ptr = self.layout.row_pointers.tolist()
        kept = [
            unpack_bits(self.qvalues, self.bits, ptr[r + 1] - ptr[r], start=ptr[r]) for r in flat.tolist()
        ]
        mask = self.layout.decode_rows(flat)
        group = torch.arange(self.shape[1], device=mask.device) // self.group_size
        zeros = self.zeros()[:, flat][group].t().to(torch.float32)
        codes = _scatter(torch.cat(kept), mask).to(torch.float32).where(mask, zeros)
        w = (codes - zeros) * self.scales[:, flat].to(torch.float32)[group].t()
        return w.reshape(*rows.shape, -1)

    def tensors(self) -> dict[str, torch.Tensor]:
        return {**self.layout.parts, "qvalues": self.qvalues, "qzeros": self.qzeros, "scales": self.scales}

    def metadata(self) -> dict[str, Any]:
        return {
            **self.layout.metadata(),
            "bits": self.bits,
            "group_size": self.group_size,
            "symmetric": self.symmetric,
        }

    @classmethod
    def from_parts(cls, tensors: Mapping[str, torch.Tensor], meta: Mapping[str, Any]) -> SparseQuantTensor:
        return cls(
            layout=SparseLayout.from_parts(tensors, meta),
            qvalues=tensors["qvalues"],
            qzeros=tensors["qzeros"],
            scales=tensors["scales"],
            bits=int(meta["bits"]),
            group_size=int(meta["group_size"]),
            symmetric=bool(meta["symmetric"]),
        )
