"""Every quantization method and every stored format of the kernels, by name.

Recipes name methods (``method: gptq``) and artifacts name formats (``"format": "int_group"``);
these two registries turn the names into classes. Pruners and low-rank methods have their own
(:data:`tierlm.kernels.sparse.PRUNERS`, :data:`tierlm.kernels.lowrank.FACTORIZERS`); this module
sits above them because the composite method combines all three.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from tierlm.kernels.composite import CompositeCompressor, CompositeTensor
from tierlm.kernels.lowrank.tensor import LowRankTensor
from tierlm.kernels.quant.awq import AWQQuantizer
from tierlm.kernels.quant.base import QuantizedTensor, Quantizer
from tierlm.kernels.quant.gptq import GPTQQuantizer
from tierlm.kernels.quant.group import GroupQuantTensor
from tierlm.kernels.quant.int8 import Int8Quantizer, Int8Tensor
from tierlm.kernels.quant.nf4 import NF4Quantizer, NF4Tensor
from tierlm.kernels.quant.rtn import RTNQuantizer
from tierlm.registry import Registry
from tierlm.kernels.sparse.tensors import SparseQuantTensor, SparseTensor

QUANTIZERS: Registry[Quantizer] = Registry(
    "quantizer",
    {
        cls.name: cls
        for cls in (RTNQuantizer, AWQQuantizer, GPTQQuantizer, Int8Quantizer, NF4Quantizer, CompositeCompressor)
    },
)

FORMATS: Registry[QuantizedTensor] = Registry(
    "stored format",
    {
        cls.format: cls
        for cls in (
            GroupQuantTensor,
            Int8Tensor,
            NF4Tensor,
            SparseTensor,
            SparseQuantTensor,
            LowRankTensor,
            CompositeTensor,
        )
    },
)


def data_free_twin(quantizer: Quantizer) -> Quantizer:
    """``quantizer`` if it needs no calibration, else round-to-nearest on its grid (the same
    storage, so the same bytes; the calibrated method's error is lower, and similarly so across
    tensors, which is what the ranking needs)."""
    if not quantizer.needs:
        return quantizer
    grid = getattr(quantizer, "grid", None)
    if grid is None:
        raise ValueError(f"mixed-precision candidate {quantizer.name!r} needs calibration and has no group grid to price it")
    return RTNQuantizer(**grid.config())


def read_quantized(state: Mapping[str, torch.Tensor], prefix: str, meta: Mapping[str, Any]) -> QuantizedTensor:
    """Inverse of :meth:`QuantizedTensor.to_state_dict`: the tensor stored under ``prefix``,
    rebuilt by the class its ``meta["format"]`` names."""
    cls = FORMATS.get(meta["format"])
    head = f"{prefix}."
    tensors = {k[len(head) :]: v for k, v in state.items() if k.startswith(head)}
    return cls.from_parts(tensors, {k: v for k, v in meta.items() if k != "format"})


def read_compressed_tensors(parts: Mapping[str, torch.Tensor], group: Mapping[str, Any]) -> QuantizedTensor:
    """Our stored tensor for one linear of a compressed-tensors checkpoint, by the format that
    reads its scheme (:meth:`QuantizedTensor.reads_compressed_tensors`)."""
    for cls in FORMATS:
        if cls.reads_compressed_tensors(group):
            return cls.from_compressed_tensors(parts, group)
    raise ValueError(
        f"unsupported compressed-tensors scheme: format {group.get('format')!r}, weights {group['weights']}, "
        f"activations {group.get('input_activations')}"
    )
