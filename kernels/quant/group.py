"""Group-wise uniform integer weights (int3/int4), the storage shared by RTN, AWQ and GPTQ.

Dequantization: ``W[n, k] = (q[n, k] - z[g(k), n]) · s[g(k), n] / a[k]`` where ``g(k)`` is the
group of input column ``k`` (``k // group_size``, or ``g_idx[k]`` after GPTQ's act-order) and
``a`` is an optional per-input-channel scale (AWQ; 1 when absent): the layer computes
``(x / a) · Q(W·a)ᵀ`` and the forward divides ``x`` by ``a`` first.

Stored tensors follow the GPTQ checkpoint layout (see :mod:`tierlm.kernels.packing`):
``qweight`` int32 ``[K·bits/32, N]`` packed along the input dim, ``qzeros`` int32
``[G, N·bits/32]`` packed along the output dim, ``scales`` ``[G, N]`` (float16 by default),
``g_idx`` int32 ``[K]`` only with act-order, ``input_scale`` float32 ``[K]`` only with AWQ.
Symmetric grids store zero = 2^(bits-1) for every group, as GPTQ does.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Mapping

import torch
from tierlm.kernels.packing import pack_int3, pack_int4, unpack_int3, unpack_int4
from tierlm.kernels.compressed_tensors import PACKED, ExportError, Scheme, int_args
from tierlm.kernels.quant.base import Kernel, QuantizedTensor

if TYPE_CHECKING:
    from tierlm.kernels.lowrank.tensor import LowRankTensor

SUPPORTED_BITS = (3, 4)
ZERO_POINTS = ("int", "float")
_RTN_CHUNK_ROWS = 16384
SCALE_DTYPES = {"float16": torch.float16, "float32": torch.float32, "bfloat16": torch.bfloat16}


def grid_params(
    w: torch.Tensor,
    bits: int,
    symmetric: bool,
    scale_dtype: torch.dtype = torch.float16,
    clip: torch.Tensor | float = 1.0,
    float_zero: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Scale and zero point per row of ``w`` (``[..., group]``) for a ``bits``-bit grid.

    ``clip`` (broadcast to ``w.shape[:-1]``) shrinks the range to ``clip ×`` the extremes (AWQ's
    clipping search); values outside it are clamped to the end codes.

    Symmetric: ``s = max|w| / (2^(b-1) - 1)``, ``z = 2^(b-1)``. Asymmetric:
    ``s = (max - min) / (2^b - 1)``, ``z = round(-min / s)``. Either way every value in range is
    within ``s/2`` of a grid point. ``s`` is rounded *up* to ``scale_dtype`` before it is used, so
    the codes are chosen against the scale that is actually stored and the grid still spans the
    group (rounding down could clip its extremes by more than half a step).

    ``float_zero`` (asymmetric): the grid starts exactly at the group's minimum (stored in
    ``scale_dtype``), ``z = -min / s`` unrounded, as GGUF's Q4_1 and k-quants store a minimum
    per block instead of an integer zero point.
    """
    maxq = (1 << bits) - 1
    if symmetric:
        scale = w.abs().amax(-1) * clip / ((1 << (bits - 1)) - 1)
    else:
        lo = w.amin(-1) * clip
        scale = (w.amax(-1) * clip - lo) / maxq
    scale = round_up_to(scale.clamp(min=torch.finfo(scale_dtype).tiny), scale_dtype)
    if symmetric:
        zero = torch.full_like(scale, float(1 << (bits - 1)))
    elif float_zero:
        zero = -lo.to(scale_dtype).to(torch.float32) / scale
    else:
        zero = torch.round(-lo / scale).clamp(0, maxq)
    return scale, zero


def round_up_to(x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Smallest ``dtype``-representable value ≥ ``x`` (elementwise), returned as float32."""
    y = x.to(dtype)
    low = y.to(torch.float32) < x
    y = torch.where(low, torch.nextafter(y, torch.full_like(y, float("inf"))), y)
    return y.to(torch.float32)


def quantize_to_grid(w: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, bits: int) -> torch.Tensor:
    """Integer codes ``clamp(round(w / s + z), 0, 2^b - 1)``; ``scale``/``zero`` broadcast to ``w``.

    The zero point's fractional part (a float zero point) is rounded with ``w / s``, its integer
    part added after, so an integer zero point rounds exactly as ``round(w / s) + z``.
    """
    whole = torch.round(zero)
    return torch.clamp(torch.round(w / scale + (zero - whole)) + whole, 0, (1 << bits) - 1)


def group_rtn(
    w: torch.Tensor,
    bits: int,
    group_size: int,
    symmetric: bool,
    scale_dtype: torch.dtype,
    clip: torch.Tensor | None = None,
    float_zero: bool = False,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Round-to-nearest of ``[N, K]`` in contiguous groups -> ``(codes uint8 [N,K], scales, zeros [G,N])``.

    ``clip`` ``[N, G]`` optionally shrinks each group's range (see :func:`grid_params`). Rows are
    processed in chunks so the float temporaries stay small for a 262k-row embedding.
    """
    n, k = w.shape
    if k % group_size:
        raise ValueError(f"in_features {k} is not a multiple of group_size {group_size}")
    codes = torch.empty(n, k, dtype=torch.uint8)
    scales = torch.empty(n, k // group_size)
    zeros = torch.empty(n, k // group_size)
    for r in range(0, n, _RTN_CHUNK_ROWS):
        g = w[r : r + _RTN_CHUNK_ROWS].reshape(-1, k // group_size, group_size)
        c = 1.0 if clip is None else clip[r : r + _RTN_CHUNK_ROWS]
        scale, zero = grid_params(g, bits, symmetric, scale_dtype, c, float_zero)
        q = quantize_to_grid(g, scale.unsqueeze(-1), zero.unsqueeze(-1), bits)
        codes[r : r + _RTN_CHUNK_ROWS] = q.reshape(-1, k)
        scales[r : r + _RTN_CHUNK_ROWS], zeros[r : r + _RTN_CHUNK_ROWS] = scale, zero
    return codes, scales.t().contiguous(), zeros.t().contiguous()


def _gather_packed_columns(words: torch.Tensor, bits: int, cols: torch.Tensor) -> torch.Tensor:
    """Codes of columns ``cols`` from words packed along dim 1, unpacking only the words needed."""
    codes_per_unit, words_per_unit = (8, 1) if bits == 4 else (32, 3)
    unit = cols // codes_per_unit
    offsets = torch.arange(words_per_unit, device=cols.device)
    word_idx = (unit.unsqueeze(1) * words_per_unit + offsets).reshape(-1)
    codes = _unpack(words[:, word_idx], bits, 1).reshape(words.shape[0], cols.numel(), codes_per_unit)
    return codes[:, torch.arange(cols.numel(), device=cols.device), cols % codes_per_unit]


def _pack(codes: torch.Tensor, bits: int, dim: int) -> torch.Tensor:
    return (pack_int4 if bits == 4 else pack_int3)(codes, dim)


def _unpack(words: torch.Tensor, bits: int, dim: int) -> torch.Tensor:
    return (unpack_int4 if bits == 4 else unpack_int3)(words, dim)


@dataclass(eq=False)
class GroupQuantTensor(QuantizedTensor):
    """Group-wise int3/int4 weight; see the module docstring for the layout."""

    format = "int_group"

    qweight: torch.Tensor
    qzeros: torch.Tensor | None  # None on a float-zero grid, which stores `mins` instead
    scales: torch.Tensor
    bits: int
    group_size: int
    symmetric: bool
    g_idx: torch.Tensor | None = None
    input_scale: torch.Tensor | None = None
    mins: torch.Tensor | None = None  # [G, N] in the scales' dtype: W = q·s + min

    @classmethod
    def from_codes(
        cls,
        codes: torch.Tensor,
        scales: torch.Tensor,
        zeros: torch.Tensor,
        *,
        bits: int,
        group_size: int,
        symmetric: bool,
        scale_dtype: torch.dtype = torch.float16,
        g_idx: torch.Tensor | None = None,
        input_scale: torch.Tensor | None = None,
        float_zero: bool = False,
    ) -> "GroupQuantTensor":
        """Pack integer ``codes [N, K]`` with per-group ``scales``/``zeros`` ``[G, N]``; with
        ``float_zero`` the zero points are stored as the grid's minimum ``-z·s``."""
        if bits not in SUPPORTED_BITS:
            raise ValueError(f"bits must be one of {SUPPORTED_BITS}, got {bits}")
        return cls(
            qweight=_pack(codes.to(torch.uint8).t(), bits, 0),
            qzeros=None if float_zero else _pack(zeros.to(torch.uint8), bits, 1),
            mins=(-zeros * scales).to(scale_dtype) if float_zero else None,
            scales=scales.to(scale_dtype),
            bits=bits,
            group_size=group_size,
            symmetric=symmetric,
            g_idx=None if g_idx is None else g_idx.to(torch.int32),
            input_scale=None if input_scale is None else input_scale.to(torch.float32),
        )

    @property
    def shape(self) -> tuple[int, int]:
        return self.scales.shape[1], self.qweight.shape[0] * 32 // self.bits

    def kernel(self, device: torch.device, int4_accuracy_level: int = 4) -> Kernel | None:
        """CPU: onnxruntime ``MatMulNBits`` (MLAS); CUDA: torch's tinygemm (bfloat16 activations)."""
        if device.type == "cpu":
            if self._runs_on_ort():
                from tierlm.kernels.ops.ort_nbits import NBitsMatMul

                return NBitsMatMul(self, accuracy_level=int4_accuracy_level)
        elif device.type == "cuda":
            from tierlm.kernels.ops.cuda_int4 import TinyGemmMatMul, tinygemm_supports

            if tinygemm_supports(self):
                return TinyGemmMatMul(self, device)
        return None

    def kernel_with_lowrank(
        self, device: torch.device, lowrank: LowRankTensor, int4_accuracy_level: int = 4
    ) -> Kernel | None:
        """CPU: the correction's two products inside the same ``MatMulNBits`` session."""
        if device.type != "cpu" or not self._runs_on_ort() or self.input_scale is not None or self.g_idx is not None:
            return None
        from tierlm.kernels.ops.ort_nbits import NBitsMatMul

        return NBitsMatMul(self, accuracy_level=int4_accuracy_level, lowrank=lowrank)

    def _runs_on_ort(self) -> bool:
        from tierlm.kernels.ops.ort_nbits import ORT_BLOCK_SIZES, ort_available

        return ort_available() and self.group_size in ORT_BLOCK_SIZES

    @classmethod
    def cat_rows(cls, parts: Sequence[QuantizedTensor]) -> GroupQuantTensor | None:
        """Same bits, group size, grid and scale dtype, no act-order, and the same AWQ input
        scales (or none): codes, zero points and scales side by side along the output dim."""
        first = parts[0]
        same = all(
            (p.bits, p.group_size, p.symmetric, p.scales.dtype) == (first.bits, first.group_size, first.symmetric, first.scales.dtype)
            and (p.mins is None) == (first.mins is None)
            and p.g_idx is None
            and (p.input_scale is None) == (first.input_scale is None)
            and (p.input_scale is None or torch.equal(p.input_scale, first.input_scale))
            for p in parts
        )
        if not same:
            return None
        float_zero = first.mins is not None
        return cls(
            qweight=torch.cat([p.qweight for p in parts], dim=1),
            qzeros=None if float_zero else _pack(torch.cat([p.zeros() for p in parts], dim=1), first.bits, 1),
            mins=torch.cat([p.mins for p in parts], dim=1) if float_zero else None,
            scales=torch.cat([p.scales for p in parts], dim=1),
            bits=first.bits,
            group_size=first.group_size,
            symmetric=first.symmetric,
            input_scale=first.input_scale,
        )

    def to_compressed_tensors(self, name: str) -> tuple[Scheme, dict[str, torch.Tensor]]:
        """``pack-quantized`` W4A16 with zero points, run by vLLM's ``CPUWNA16LinearKernel``: our
        ``qweight [K/8, N]`` transposed is ``weight_packed [N, K/8]``, ``qzeros [G, N/8]``
        transposed is ``weight_zero_point [N/8, G]``, ``scales [G, N]`` transposed is
        ``weight_scale [N, G]``. Codes and zero points are both unsigned, so ``(q - z) · s`` is
        the same product."""
        if self.input_scale is not None:
            raise ExportError(f"{name}: AWQ per-input-channel scales have no place in vLLM's fused linears")
        if self.g_idx is not None:
            raise ExportError(f"{name}: GPTQ act-order (g_idx) is not run by vLLM's CPU int4 kernel")
        if self.bits != 4:
            raise ExportError(f"{name}: {self.bits}-bit weights; vLLM's CPU kernel runs 4-bit only")
        if self.mins is not None:
            raise ExportError(f"{name}: float zero points (a minimum per group) have no compressed-tensors scheme")
        n, k = self.shape
        scheme = Scheme(PACKED, int_args(4, False, "group", self.group_size))
        return scheme, {
            "weight_packed": self.qweight.t().contiguous(),
            "weight_scale": self.scales.t().contiguous(),
            "weight_zero_point": self.qzeros.t().contiguous(),
            "weight_shape": torch.tensor([n, k], dtype=torch.int64),
        }

    @classmethod
    def reads_compressed_tensors(cls, group: Mapping[str, Any]) -> bool:
        weights = group["weights"]
        return (
            group.get("format") == PACKED
            and weights["num_bits"] == 4
            and weights["strategy"] == "group"
            and not weights["symmetric"]
        )

    @classmethod
    def from_compressed_tensors(cls, parts: Mapping[str, torch.Tensor], group: Mapping[str, Any]) -> "GroupQuantTensor":
        return cls(
            qweight=parts["weight_packed"].t().contiguous(),
            qzeros=parts["weight_zero_point"].t().contiguous(),
            scales=parts["weight_scale"].t().contiguous(),
            bits=4,
            group_size=int(group["weights"]["group_size"]),
            symmetric=False,
        )

    def codes(self) -> torch.Tensor:
        """Unpacked codes ``[N, K]`` (uint8)."""
        return _unpack(self.qweight, self.bits, 0).t()

    def take_rows(self, rows: torch.Tensor) -> GroupQuantTensor | None:
        """Output columns of the packed codes, zero points (repacked), minimums and scales; the
        per-input act-order and AWQ scales stay whole. None when integer zero points cannot be
        packed for that many rows (a multiple of 8 at 4 bits, of 32 at 3)."""
        rows = rows.to(torch.int64)
        if self.qzeros is not None and len(rows) % (8 if self.bits == 4 else 32):
            return None
        return GroupQuantTensor(
            qweight=self.qweight[:, rows],
            qzeros=None if self.qzeros is None else _pack(self.zeros()[:, rows], self.bits, 1),
            mins=None if self.mins is None else self.mins[:, rows],
            scales=self.scales[:, rows],
            bits=self.bits,
            group_size=self.group_size,
            symmetric=self.symmetric,
            g_idx=self.g_idx,
            input_scale=self.input_scale,
        )

    def zeros(self) -> torch.Tensor:
        """Zero points ``[G, N]``: uint8 codes, or float32 ``-min / s`` on a float-zero grid."""
        if self.mins is not None:
            return -self.mins.to(torch.float32) / self.scales.to(torch.float32)
        return _unpack(self.qzeros, self.bits, 1)

    def group_index(self) -> torch.Tensor:
        """Group of each input column ``[K]`` (int64)."""
        if self.g_idx is not None:
            return self.g_idx.to(torch.int64)
        return torch.arange(self.shape[1], device=self.scales.device) // self.group_size

    def dequantize(self) -> torch.Tensor:
        g = self.group_index()
        scales = self.scales.to(torch.float32)
        codes = self.codes().to(torch.float32)
        if self.mins is not None:
            w = codes * scales[g].t() + self.mins.to(torch.float32)[g].t()
        else:
            w = (codes - self.zeros().to(torch.float32)[g].t()) * scales[g].t()
        return w if self.input_scale is None else w / self.input_scale

    def dequantize_rows(self, rows: torch.Tensor) -> torch.Tensor:
        flat = rows.reshape(-1).to(torch.int64)
        g = self.group_index()
        codes = _unpack(self.qweight[:, flat], self.bits, 0).t().to(torch.float32)
        scales = self.scales[:, flat].to(torch.float32)
        if self.mins is not None:
            w = codes * scales[g].t() + self.mins[:, flat].to(torch.float32)[g].t()
        else:
            zeros = _gather_packed_columns(self.qzeros, self.bits, flat).to(torch.float32)
            w = (codes - zeros[g].t()) * scales[g].t()
        if self.input_scale is not None:
            w = w / self.input_scale
        return w.reshape(*rows.shape, -1)

    def tensors(self) -> dict[str, torch.Tensor]:
        out = {"qweight": self.qweight, "scales": self.scales}
        out.update({"mins": self.mins} if self.mins is not None else {"qzeros": self.qzeros})
        if self.g_idx is not None:
            out["g_idx"] = self.g_idx
        if self.input_scale is not None:
            out["input_scale"] = self.input_scale
        return out

    def metadata(self) -> dict[str, Any]:
        meta = {"bits": self.bits, "group_size": self.group_size, "symmetric": self.symmetric}
        return meta if self.mins is None else {**meta, "zero_point": "float"}

    @classmethod
    def from_parts(cls, tensors: Mapping[str, torch.Tensor], meta: Mapping[str, Any]) -> "GroupQuantTensor":
        return cls(
            qweight=tensors["qweight"],
            qzeros=tensors.get("qzeros"),
            mins=tensors.get("mins"),
            scales=tensors["scales"],
            g_idx=tensors.get("g_idx"),
            input_scale=tensors.get("input_scale"),
            bits=int(meta["bits"]),
            group_size=int(meta["group_size"]),
            symmetric=bool(meta["symmetric"]),
        )


@dataclass(frozen=True)
class GroupGrid:
    """The grid settings RTN, AWQ and GPTQ share (validated once, here)."""

    bits: int = 4
    group_size: int = 128
    symmetric: bool = False
    scale_dtype: str = "float16"
    #: "int" (a b-bit zero point per group, GPTQ's layout) or "float" (a minimum per group in
    #: the scale's dtype, GGUF Q4_1's and k-quants' layout; asymmetric only).
    zero_point: str = "int"

    def __post_init__(self) -> None:
        if self.bits not in SUPPORTED_BITS:
            raise ValueError(f"bits must be one of {SUPPORTED_BITS}, got {self.bits}")
        if self.group_size <= 0 or self.group_size % 32:
            # 32 keeps groups whole within int3's 32-code words and meets onnxruntime's block sizes.
            raise ValueError(f"group_size must be a positive multiple of 32, got {self.group_size}")
        if self.scale_dtype not in SCALE_DTYPES:
            raise ValueError(f"scale_dtype must be one of {sorted(SCALE_DTYPES)}")
        if self.zero_point not in ZERO_POINTS:
            raise ValueError(f"zero_point must be one of {ZERO_POINTS}, got {self.zero_point!r}")
        if self.zero_point == "float" and self.symmetric:
            raise ValueError("a float zero point needs an asymmetric grid (symmetric: false)")

    @property
    def float_zero(self) -> bool:
        return self.zero_point == "float"

    def params(self, w: torch.Tensor, clip: torch.Tensor | float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
        """:func:`grid_params` of ``w``'s rows with these settings."""
        return grid_params(w, self.bits, self.symmetric, self.torch_scale_dtype, clip, self.float_zero)

    @property
    def torch_scale_dtype(self) -> torch.dtype:
        return SCALE_DTYPES[self.scale_dtype]

    def rtn(
        self, w: torch.Tensor, input_scale: torch.Tensor | None = None, clip: torch.Tensor | None = None
    ) -> GroupQuantTensor:
        """Round-to-nearest ``w`` (already multiplied by ``input_scale`` if given)."""
        codes, scales, zeros = group_rtn(
            w, self.bits, self.group_size, self.symmetric, self.torch_scale_dtype, clip, self.float_zero
        )
        return self.pack(codes, scales, zeros, input_scale=input_scale)

    def pack(
        self,
        codes: torch.Tensor,
        scales: torch.Tensor,
        zeros: torch.Tensor,
        g_idx: torch.Tensor | None = None,
        input_scale: torch.Tensor | None = None,
    ) -> GroupQuantTensor:
        return GroupQuantTensor.from_codes(
            codes,
            scales,
            zeros,
            bits=self.bits,
            group_size=self.group_size,
            symmetric=self.symmetric,
            scale_dtype=self.torch_scale_dtype,
            g_idx=g_idx,
            input_scale=input_scale,
            float_zero=self.float_zero,
        )

    def config(self) -> dict[str, Any]:
        config = {
            "bits": self.bits,
            "group_size": self.group_size,
            "symmetric": self.symmetric,
            "scale_dtype": self.scale_dtype,
        }
        # Only when set: recipes and manifests written before the option stay equal.
        return config if not self.float_zero else {**config, "zero_point": self.zero_point}
