"""Quantization methods, one module each, behind :class:`~tierlm.kernels.quant.base.Quantizer`.

Importing this package registers every method; build one with :func:`get_quantizer`.
"""

from tierlm.kernels.quant import awq, gptq, int8, nf4, rtn  # noqa: F401  (registration)
from tierlm.kernels.quant.base import (
    QuantizedTensor,
    Quantizer,
    get_quantizer,
    quantizer_names,
)

__all__ = ["QuantizedTensor", "Quantizer", "get_quantizer", "quantizer_names"]
