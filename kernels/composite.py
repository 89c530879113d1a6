"""The composite weight ``W ≈ dequant(Q(M ⊙ W)) + L·R`` and the compressor that builds it.

:class:`CompositeTensor` (format ``composite``) holds a *base* (any stored format; normally a
:class:`~tierlm.kernels.sparse.tensors.SparseQuantTensor`) and an optional low-rank correction
(:class:`~tierlm.kernels.lowrank.tensor.LowRankTensor`). Layers run ``base(x) + (x·Rᵀ)·Lᵀ``:
the base through its own fast kernel, the correction as two thin products; ``W`` is never
formed. Its metadata nests each part's metadata (for loading) and repeats the headline numbers
(pattern, sparsity, bits, group size, rank) at the top level for ``tierlm_compression.json``.

:class:`CompositeCompressor` is a :class:`~tierlm.kernels.quant.base.Quantizer` (registry name
``composite``), so a pipeline treats it like any quantizer. Each stage is optional:

1. prune (any registered pruner) -> mask ``M`` and pruned weight;
2. quantize the kept weights on a group grid: ``rtn`` (round the pruned weight; a pruned zero
   rounds to the zero point, so the mask survives exactly) or ``gptq`` (an OBS sweep that keeps
   the mask fixed, so error feedback never refills pruned positions; with the ``sparsegpt``
   pruner, pruning and quantization happen in the same sweep, as in the SparseGPT paper);
3. fit a rank-``r`` term to the residual ``W - base`` with a registered factorizer (``asvd``
   whitens by the calibration covariance, so the correction targets the *output* error the base
   leaves).

With one rank for all layers, ``quantize(weight, calib)`` does all three. For a global budget
the pipeline calls :meth:`~CompositeCompressor.base` and
:meth:`~CompositeCompressor.decompose_residual` per layer, allocates ranks with
:func:`~tierlm.kernels.lowrank.budget.allocate_ranks` over the residual spectra, then
:meth:`~CompositeCompressor.assemble`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from tierlm.kernels.calibration import LayerStats
from tierlm.kernels.lowrank import FACTORIZERS
from tierlm.kernels.lowrank.base import Decomposition
from tierlm.kernels.lowrank.tensor import LowRankTensor
from tierlm.kernels.quant.base import Kernel, QuantizedTensor, Quantizer
from tierlm.kernels.quant.gptq import GPTQQuantizer
from tierlm.kernels.quant.group import GroupGrid, GroupQuantTensor
from tierlm.kernels.sparse import PRUNERS
from tierlm.kernels.sparse.sparsegpt import SparseGPTPruner, sparsegpt_sweep
from tierlm.kernels.sparse.tensors import Encoding, SparseQuantTensor, SparseTensor

QUANT_METHODS = ("rtn", "gptq")
#: What :meth:`CompositeCompressor.base` stores: quantized, pruned + quantized, or pruned float.
_BASE_FORMATS: dict[str, type[QuantizedTensor]] = {
    cls.format: cls for cls in (GroupQuantTensor, SparseQuantTensor, SparseTensor)
}


def _read_part(
    tensors: Mapping[str, torch.Tensor], prefix: str, meta: Mapping[str, Any], formats: Mapping[str, type[QuantizedTensor]]
) -> QuantizedTensor:
    """One stored part of a composite (``base`` or ``lowrank``), by its recorded format."""
    cls = formats.get(meta["format"])
    if cls is None:
        raise ValueError(f"a composite's {prefix} cannot be format {meta['format']!r}; expected one of {sorted(formats)}")
    head = f"{prefix}."
    parts = {k[len(head):]: v for k, v in tensors.items() if k.startswith(head)}
    return cls.from_parts(parts, {k: v for k, v in meta.items() if k != "format"})


@dataclass(eq=False)
class CompositeTensor(QuantizedTensor):
    """``base + lowrank``; see the module docstring."""

    format = "composite"

    base: QuantizedTensor
    lowrank: LowRankTensor | None = None

    def __post_init__(self) -> None:
        if self.lowrank is not None and self.lowrank.shape != self.base.shape:
            raise ValueError(f"low-rank shape {self.lowrank.shape} does not match base {self.base.shape}")

    @property
    def shape(self) -> tuple[int, int]:
        return self.base.shape

    @property
    def rank(self) -> int:
        return 0 if self.lowrank is None else self.lowrank.rank

    def kernel(self, device: torch.device, int4_accuracy_level: int = 4) -> Kernel | None:
        """The base's kernel (or its reference product) plus the low-rank product."""
        from tierlm.kernels.ops.lowrank_mm import SumMatMul

        if self.lowrank is not None:
            joint = self.base.kernel_with_lowrank(device, self.lowrank, int4_accuracy_level)
            if joint is not None:
                return joint
        base = self.base.kernel(device, int4_accuracy_level)
        if base is None:
            on_device = self.base.to(device)
            base = lambda x: on_device.linear_reference(x.to(torch.float32))  # noqa: E731
        if self.lowrank is None:
            return base
        return SumMatMul(base, self.lowrank.kernel(device, int4_accuracy_level))

    @classmethod
    def cat_rows(cls, parts: Sequence[QuantizedTensor]) -> CompositeTensor | None:
        """Bases joined by their format, corrections stacked (a part without one adds rank 0)."""
        bases = [p.base for p in parts]
        if len({type(b) for b in bases}) != 1:
            return None
        base = type(bases[0]).cat_rows(bases)
        if base is None:
            return None
        if all(p.lowrank is None for p in parts):
            return cls(base)
        dtype = next(p.lowrank.left.dtype for p in parts if p.lowrank is not None)
        lowranks = [
            p.lowrank
            if p.lowrank is not None
            else LowRankTensor(torch.zeros(p.shape[0], 0, dtype=dtype), torch.zeros(0, p.shape[1], dtype=dtype))
            for p in parts
        ]
        return cls(base, LowRankTensor.cat_rows(lowranks))

    def dequantize(self) -> torch.Tensor:
        w = self.base.dequantize()
        return w if self.lowrank is None else w + self.lowrank.dequantize()

    def dequantize_rows(self, rows: torch.Tensor) -> torch.Tensor:
        w = self.base.dequantize_rows(rows)
        return w if self.lowrank is None else w + self.lowrank.dequantize_rows(rows)

    def linear_reference(self, x: torch.Tensor) -> torch.Tensor:
        y = self.base.linear_reference(x)
        return y if self.lowrank is None else y + self.lowrank.linear_reference(x)

    def tensors(self) -> dict[str, torch.Tensor]:
        out = {f"base.{k}": v for k, v in self.base.tensors().items()}
        if self.lowrank is not None:
            out.update({f"lowrank.{k}": v for k, v in self.lowrank.tensors().items()})
        return out

    def metadata(self) -> dict[str, Any]:
        base_meta = {"format": self.base.format, **self.base.metadata()}
        summary = {k: base_meta[k] for k in ("pattern", "sparsity", "bits", "group_size") if k in base_meta}
        meta: dict[str, Any] = {**summary, "rank": self.rank, "base": base_meta}
        if self.lowrank is not None:
            meta["lowrank"] = {"format": self.lowrank.format, **self.lowrank.metadata()}
        return meta

    @classmethod
    def from_parts(cls, tensors: Mapping[str, torch.Tensor], meta: Mapping[str, Any]) -> CompositeTensor:
        base = _read_part(tensors, "base", meta["base"], _BASE_FORMATS)
        lowrank = None
        if "lowrank" in meta:
            lowrank = _read_part(tensors, "lowrank", meta["lowrank"], {LowRankTensor.format: LowRankTensor})
        return cls(base, lowrank)


class CompositeCompressor(Quantizer):
    """Prune, quantize the kept weights, correct the residual at low rank; each stage optional.

    ``prune``: pruner config, e.g. ``{"method": "wanda", "pattern": "2:4"}``.
    ``quant``: ``{"method": "rtn" | "gptq", "bits": 4, "group_size": 128, ...}`` (GroupGrid
    settings plus ``percdamp`` for gptq); without it kept weights are stored as float16.
    ``lowrank``: ``{"method": "asvd" | "svd", "rank": r, "dtype": "float16"}``; ``rank`` may be
    omitted when ranks come from a global budget (:meth:`assemble`).
    ``encoding``: mask storage (``nm`` / ``bitmask`` / ``csr``; default by pattern).
    """

    name = "composite"

    def __init__(
        self,
        prune: Mapping[str, Any] | None = None,
        quant: Mapping[str, Any] | None = None,
        lowrank: Mapping[str, Any] | None = None,
        encoding: Encoding | None = None,
    ) -> None:
        if prune is None and quant is None and lowrank is None:
            raise ValueError("a composite needs at least one of prune, quant, lowrank")
        lowrank_config = dict(lowrank or {})
        self.pruner = None
        if prune is not None:
            config = dict(prune)
            self.pruner = PRUNERS.build(config.pop("method"), **config)
        self.grid = self.quant_method = None
        self.percdamp = 0.01
        if quant is not None:
            config = dict(quant)
            self.quant_method = config.pop("method", "rtn")
            if self.quant_method not in QUANT_METHODS:
                raise ValueError(f"composite quant method must be one of {QUANT_METHODS}")
            self.percdamp = config.pop("percdamp", 0.01)
            self.grid = GroupGrid(**config)
            if self.pruner is not None and self.grid.float_zero:
                raise ValueError("a pruned weight must dequantize to exactly 0, which a float zero point does not give")
        self.factorizer = None
        self.rank = lowrank_config.get("rank")
        self.lowrank_dtype = lowrank_config.get("dtype", "float16")
        if lowrank is not None:
            self.factorizer = FACTORIZERS.build(lowrank_config.get("method", "asvd"))
        self.encoding = encoding

    @property
    def needs(self) -> frozenset[str]:  # type: ignore[override]
        needs: set[str] = set()
        for part in (self.pruner, self.factorizer):
            if part is not None:
                needs |= part.needs
        if self.quant_method == "gptq":
            needs.add("hessian")
        return frozenset(needs)

    @torch.no_grad()
    def base(self, weight: torch.Tensor, calib: LayerStats | None = None) -> QuantizedTensor | None:
        """Stages 1-2: the sparse and/or quantized base (None when both are off)."""
        w = weight.detach().to(torch.float32)
        if self.pruner is None:
            if self.grid is None:
                return None
            if self.quant_method == "rtn":
                return self.grid.rtn(w)
            config = self.grid.config()
            return GPTQQuantizer(**config, percdamp=self.percdamp).quantize(w, self._require(calib))
        pattern = self.pruner.pattern
        if self.grid is None:
            pruned = self.pruner.prune(w, calib)
            return SparseTensor.from_dense(pruned.weight, pruned.mask, pattern, self.encoding)
        if self.quant_method == "gptq" and isinstance(self.pruner, SparseGPTPruner):
            sweep = self.pruner.sweep(w, calib, self.grid)
            mask, codes, scales, zeros = sweep.mask, sweep.codes, sweep.scales, sweep.zeros
        else:
            pruned = self.pruner.prune(w, calib)
            mask = pruned.mask
            if self.quant_method == "gptq":
                h = self._require(calib).hessian()
                sweep = sparsegpt_sweep(w, h, mask=mask, grid=self.grid, percdamp=self.percdamp)
                codes, scales, zeros = sweep.codes, sweep.scales, sweep.zeros
            else:
                q = self.grid.rtn(pruned.weight)
                codes, scales, zeros = q.codes(), q.scales, q.zeros()
        return SparseQuantTensor.from_codes(
            codes,
            scales,
            zeros,
            mask,
            bits=self.grid.bits,
            group_size=self.grid.group_size,
            symmetric=self.grid.symmetric,
            scale_dtype=self.grid.torch_scale_dtype,
            pattern=pattern,
            encoding=self.encoding,
        )

    @torch.no_grad()
    def decompose_residual(
        self, weight: torch.Tensor, base: QuantizedTensor | None, calib: LayerStats | None = None
    ) -> Decomposition:
        """Stage 3's SVD of ``W - base`` (whole ``W`` without a base)."""
        if self.factorizer is None:
            raise ValueError("this composite has no low-rank stage")
        residual = weight.detach().to(torch.float32)
        if base is not None:
            residual = residual - base.dequantize()
        return self.factorizer.decompose(residual, calib)

    def assemble(
        self, base: QuantizedTensor | None, decomposition: Decomposition | None, rank: int
    ) -> QuantizedTensor:
        """The stored weight: the base alone, the low-rank factors alone, or both."""
        lowrank = None
        if decomposition is not None and rank > 0:
            lowrank = decomposition.truncate(rank, self.lowrank_dtype)
        if base is None:
            if lowrank is None:
                raise ValueError("nothing to store: no base and rank 0")
            return lowrank
        return base if lowrank is None else CompositeTensor(base, lowrank)

    def quantize(self, weight: torch.Tensor, calib: LayerStats | None = None) -> QuantizedTensor:
        """All stages with the fixed ``lowrank["rank"]``."""
        if self.needs:
            self._require(calib)
        base = self.base(weight, calib)
        if self.factorizer is None:
            return self.assemble(base, None, 0)
        if self.rank is None:
            raise ValueError("no lowrank rank configured; use base/decompose_residual/assemble with a budget")
        return self.assemble(base, self.decompose_residual(weight, base, calib), int(self.rank))

    def config(self) -> dict[str, Any]:
        """Each stage's settings, nested, plus the headline numbers at the top level.

        The top-level ``bits``/``group_size``/``pattern``/``sparsity``/``rank`` (None where a
        stage is off, or ``rank`` when it comes from a budget) are what a manifest summarises
        per layer; the stored tensor's metadata carries the realised values too.
        """
        config: dict[str, Any] = {
            "method": self.name,
            "bits": None if self.grid is None else self.grid.bits,
            "group_size": None if self.grid is None else self.grid.group_size,
            "pattern": None if self.pruner is None else self.pruner.pattern.name,
            "sparsity": None if self.pruner is None else self.pruner.pattern.sparsity,
            "rank": self.rank,
        }
        if self.pruner is not None:
            config["prune"] = self.pruner.config()
        if self.grid is not None:
            config["quant"] = {"method": self.quant_method, **self.grid.config()}
        if self.factorizer is not None:
            config["lowrank"] = {**self.factorizer.config(), "dtype": self.lowrank_dtype}
            if self.rank is not None:
                config["lowrank"]["rank"] = self.rank
        if self.encoding is not None:
            config["encoding"] = self.encoding
        return config
