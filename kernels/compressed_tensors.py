"""The compressed-tensors checkpoint vocabulary (the format vLLM loads): schemes and their errors.

A stored format that vLLM can run says how in its own class
(:meth:`~tierlm.kernels.quant.base.QuantizedTensor.to_compressed_tensors` and
:meth:`~tierlm.kernels.quant.base.QuantizedTensor.from_compressed_tensors`); this module holds
what those methods and :mod:`tierlm.kernels.vllm_export` share.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

QUANT_METHOD = "compressed-tensors"
PACKED = "pack-quantized"
INT_QUANTIZED = "int-quantized"


class ExportError(ValueError):
    """The artifact holds a module vLLM cannot run as it is (the message says which and why)."""


@dataclass(frozen=True)
class Scheme:
    """One compressed-tensors quantization scheme: its format and its ``config_groups`` entry."""

    format: str
    weights: dict[str, Any]
    input_activations: dict[str, Any] | None = None

    def group(self, targets: list[str]) -> dict[str, Any]:
        return {
            "targets": targets,
            "weights": self.weights,
            "input_activations": self.input_activations,
            "output_activations": None,
            "format": self.format,
        }

    @property
    def key(self) -> str:
        return json.dumps([self.format, self.weights, self.input_activations], sort_keys=True)


def int_args(bits: int, symmetric: bool, strategy: str, group_size: int | None = None, dynamic: bool = False) -> dict[str, Any]:
    """A compressed-tensors ``QuantizationArgs`` entry for integer weights or activations."""
    return {
        "num_bits": bits,
        "type": "int",
        "symmetric": symmetric,
        "strategy": strategy,
        "group_size": group_size,
        "dynamic": dynamic,
        "actorder": None,
        "block_structure": None,
        "observer": None if dynamic else "minmax",
        "observer_kwargs": {},
    }
