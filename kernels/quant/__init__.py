"""Quantization methods, one module each, behind :class:`~tierlm.kernels.quant.base.Quantizer`.

Importing this package registers every method. How a layer-by-layer pipeline uses them::

    quantizer = get_quantizer("gptq", bits=4, group_size=128)          # from the recipe
    spec = StatsSpec.for_needs(quantizer.needs)                        # what to collect
    with CalibrationRecorder({"mlp.up_proj": block.mlp.up_proj}, spec) as rec:
        block(hidden_states)                                           # one block's inputs
    quantize_linears(block, lambda name, m: quantizer, calib=rec.stats)  # swap in QuantLinear
    tensors, meta = block.mlp.up_proj.qweight.to_state_dict("model.layers.0.mlp.up_proj")
    # -> model.safetensors gets `tensors`; tierlm_compression.json gets meta + quantizer.config()
    QuantizedTensor.from_state_dict(state, "model.layers.0.mlp.up_proj", meta)  # on load
"""

from tierlm.kernels.quant import awq, gptq, int8, nf4, rtn  # noqa: F401  (registration)
from tierlm.kernels.quant.base import QuantizedTensor, Quantizer, get_quantizer, quantizer_names

__all__ = ["QuantizedTensor", "Quantizer", "get_quantizer", "quantizer_names"]
