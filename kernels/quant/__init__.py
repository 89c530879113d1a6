"""Quantization methods, one module each, behind :class:`~tierlm.kernels.quant.base.Quantizer`,
and their stored formats. Every quantizer (the composite too) is named in
:data:`tierlm.kernels.methods.QUANTIZERS`. How a layer-by-layer pipeline uses them::

    quantizer = QUANTIZERS.build("gptq", bits=4, group_size=128)        # from the recipe
    spec = StatsSpec.for_needs(quantizer.needs)                        # what to collect
    with CalibrationRecorder({"mlp.up_proj": block.mlp.up_proj}, spec) as rec:
        block(hidden_states)                                           # one block's inputs
    quantize_linears(block, lambda name, m: quantizer, calib=rec.stats)  # swap in QuantLinear
    tensors, meta = block.mlp.up_proj.qweight.to_state_dict("model.layers.0.mlp.up_proj")
    # -> model.safetensors gets `tensors`; tierlm_compression.json gets meta + quantizer.config()
    read_quantized(state, "model.layers.0.mlp.up_proj", meta)          # on load (methods.py)
"""

from tierlm.kernels.quant.base import QuantizedTensor, Quantizer

__all__ = ["QuantizedTensor", "Quantizer"]
