"""Fast matmul kernels for quantized weights; each has a reference in ``QuantizedTensor``."""
