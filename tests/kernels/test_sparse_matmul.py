"""Every CPU kernel of the sparse, low-rank and composite formats against the dense reference."""

import pytest
import torch
from tierlm.kernels.modules import QuantLinear
from tierlm.kernels.ops.lowrank_mm import LowRankMatMul
from tierlm.kernels.ops.sparse_mm import CSR_MAX_DENSITY, CSRMatMul, DenseMatMul, cpu_sparse_kernel
from tierlm.kernels.methods import QUANTIZERS
from tierlm.kernels.sparse import SparseTensor, SparsityPattern, select_mask


def _sparse(w, pattern, sparsity=None, encoding=None):
    p = SparsityPattern.parse(pattern, sparsity)
    return SparseTensor.from_dense(w, select_mask(w.abs(), p), p, encoding, "float32")


@pytest.mark.parametrize(
    "pattern,sparsity,encoding",
    [
        ("2:4", None, "nm"),
        ("unstructured", 0.5, "bitmask"),
        ("unstructured", 0.95, "csr"),
        ("unstructured", 0.0, "bitmask"),
    ],
)
@pytest.mark.parametrize("batch", [1, 8])
@pytest.mark.parametrize("kernel", [CSRMatMul, DenseMatMul])
def test_sparse_kernels_match_the_dense_reference(
    make_weight, activations, pattern, sparsity, encoding, batch, kernel
):
    w = make_weight("heavy_tailed", 96, 256, seed=2)
    st = _sparse(w, pattern, sparsity, encoding)
    x = activations(256).sample(batch)
    expected = x @ st.dequantize().t()
    assert torch.allclose(kernel(st)(x), expected, rtol=1e-5, atol=1e-5)


def test_cpu_kernel_choice_follows_the_measured_crossover(make_weight):
    w = make_weight("gaussian", 32, 64, seed=0)
    assert isinstance(cpu_sparse_kernel(_sparse(w, "unstructured", 1 - CSR_MAX_DENSITY / 2)), CSRMatMul)
    assert isinstance(cpu_sparse_kernel(_sparse(w, "2:4")), DenseMatMul)


def test_lowrank_kernel_matches_reference(activations):
    lr = QUANTIZERS.build("composite", lowrank={"method": "svd", "rank": 8}).quantize(torch.randn(64, 128))
    x = activations(128).sample(5)
    assert torch.allclose(LowRankMatMul(lr)(x), lr.linear_reference(x), rtol=1e-4, atol=1e-4)


CONFIGS = {
    "sparse-fp16-2of4": {"prune": {"method": "wanda", "pattern": "2:4"}},
    "sparse-fp16-90": {"prune": {"method": "magnitude", "sparsity": 0.9}},
    "sparse-int4-2of4": {
        "prune": {"method": "sparsegpt", "pattern": "2:4"},
        "quant": {"method": "gptq", "group_size": 64},
    },
    "sparse-int3-unstructured": {
        "prune": {"method": "wanda", "sparsity": 0.5},
        "quant": {"method": "rtn", "bits": 3, "group_size": 64},
    },
    "lowrank": {"lowrank": {"method": "asvd", "rank": 16}},
    "composite": {
        "prune": {"method": "wanda", "pattern": "2:4"},
        "quant": {"method": "gptq", "group_size": 64},
        "lowrank": {"method": "asvd", "rank": 16},
    },
    "composite-float-base": {
        "prune": {"method": "wanda", "sparsity": 0.5},
        "lowrank": {"method": "svd", "rank": 4},
    },
}


@pytest.mark.parametrize("name", sorted(CONFIGS))
@pytest.mark.parametrize("batch", [1, 8])
def test_quant_linear_fast_path_equals_reference(outlier_layer, name, batch):
    w, stats, held_out = outlier_layer
    qt = QUANTIZERS.build("composite", **CONFIGS[name]).quantize(w, stats)
    bias = torch.linspace(-1, 1, w.shape[0])
    # accuracy level 0: the int4 kernel keeps float activations, so it matches the reference.
    fast = QuantLinear(qt, bias, backend="fast", int4_accuracy_level=0)
    reference = QuantLinear(qt, bias, backend="reference")
    x = held_out[:batch]
    assert torch.allclose(fast(x), reference(x), rtol=1e-4, atol=1e-3)
    assert torch.allclose(reference(x), x @ qt.dequantize().t() + bias, rtol=1e-4, atol=1e-3)
