"""Float zero points (a minimum per group, GGUF Q4_1's and k-quants' layout): exact on such a
grid, a fast kernel equal to the reference, and refused where a format cannot hold them."""

import pytest
import torch

from tierlm.kernels.compressed_tensors import ExportError
from tierlm.kernels.methods import QUANTIZERS
from tierlm.kernels.modules import QuantLinear, fuse_linears
from tierlm.kernels.ops.ort_nbits import NBitsMatMul, ort_available

needs_ort = pytest.mark.skipif(not ort_available(), reason="onnxruntime not installed")


def q4_1_weight(n: int = 64, k: int = 256, seed: int = 0) -> torch.Tensor:
    """Weights as GGUF Q4_1 stores them: ``d·q + m`` per block of 32, d and m in float16, and
    (as llama.cpp's quantizer chooses them) every block spanning codes 0 to 15."""
    g = torch.Generator().manual_seed(seed)
    d = (torch.rand(n, k // 32, generator=g) * 0.01 + 1e-3).half().float()
    m = (torch.randn(n, k // 32, generator=g) * 0.05).half().float()
    q = torch.randint(0, 16, (n, k), generator=g).float()
    q[:, 0::32], q[:, 1::32] = 0, 15
    return q * d.repeat_interleave(32, 1) + m.repeat_interleave(32, 1)


def test_a_float_zero_grid_of_the_source_block_size_reproduces_q4_1(outlier_layer):
    _, stats, _ = outlier_layer
    w = q4_1_weight()
    exact = QUANTIZERS.build("rtn", bits=4, group_size=32, zero_point="float").quantize(w)
    assert torch.equal(exact.dequantize(), w)
    assert exact.nbytes * 8 / w.numel() == 5.0  # 4-bit codes, float16 scale and minimum per 32: Q4_1's size
    # GPTQ refits each group's grid to weights its error feedback has moved (by float rounding
    # here): the same grid up to an occasional neighbouring code.
    gptq = QUANTIZERS.build("gptq", bits=4, group_size=32, zero_point="float").quantize(w, stats)
    assert float((gptq.dequantize() - w).norm() / w.norm()) < 1e-2
    # An integer zero point cannot start the grid at an arbitrary minimum.
    integer = QUANTIZERS.build("rtn", bits=4, group_size=32).quantize(w)
    assert float((integer.dequantize() - w).norm() / w.norm()) > 5e-2


@needs_ort
@pytest.mark.parametrize("batch", [1, 9])
def test_fast_kernel_adds_the_group_minimums_exactly(outlier_layer, batch):
    w, stats, held_out = outlier_layer
    qt = QUANTIZERS.build("gptq", bits=4, group_size=64, zero_point="float").quantize(w, stats)
    x = held_out[:batch]
    torch.testing.assert_close(NBitsMatMul(qt, accuracy_level=0)(x), qt.linear_reference(x), rtol=1e-5, atol=1e-4)
    fast = QuantLinear(qt, backend="fast")(x)
    assert float((fast - qt.linear_reference(x)).norm() / qt.linear_reference(x).norm()) < 0.05


@needs_ort
def test_float_zero_linears_join_and_keep_their_products(outlier_layer):
    w, stats, held_out = outlier_layer
    quantizer = QUANTIZERS.build("rtn", bits=4, group_size=32, zero_point="float")
    modules = [QuantLinear(quantizer.quantize(w[i * 32 : (i + 1) * 32]), backend="reference") for i in range(3)]
    fused = fuse_linears(modules)
    for got, module in zip(fused(held_out[:4]), modules):
        torch.testing.assert_close(got, module(held_out[:4]), rtol=1e-5, atol=1e-5)


def test_where_float_zero_points_cannot_go():
    w = q4_1_weight()
    qt = QUANTIZERS.build("rtn", bits=4, group_size=32, zero_point="float").quantize(w)
    with pytest.raises(ExportError, match="float zero"):
        qt.to_compressed_tensors("layers.0.mlp.up_proj")
    with pytest.raises(ValueError, match="asymmetric"):
        QUANTIZERS.build("rtn", symmetric=True, zero_point="float")
    with pytest.raises(ValueError, match="exactly 0"):
        QUANTIZERS.build(
            "composite", prune={"method": "magnitude", "sparsity": 0.5}, quant={"method": "rtn", "zero_point": "float"}
        )
