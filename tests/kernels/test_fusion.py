"""Joined linears (one product for q/k/v or gate/up), the composite's one-session kernel, and
output rows computed alone or cut out once: each against the products it replaces."""

import pytest
import torch
from torch import nn

from tierlm.kernels.composite import CompositeTensor
from tierlm.kernels.methods import QUANTIZERS
from tierlm.kernels.modules import QuantLinear, fuse_linears, linear_rows, rows_of
from tierlm.kernels.ops.ort_nbits import ort_available

needs_ort = pytest.mark.skipif(not ort_available(), reason="onnxruntime not installed")

K = 256
OUT = (128, 64, 64)  # q, k, v widths (k and v narrower, as with grouped-query attention)

METHODS = {
    "rtn-g64": ("rtn", {"bits": 4, "group_size": 64}),
    "rtn3-g32": ("rtn", {"bits": 3, "group_size": 32}),
    "gptq-g64": ("gptq", {"group_size": 64}),
    "int8": ("int8", {}),
    "sparse-int4": ("composite", {"prune": {"method": "wanda", "pattern": "2:4"}, "quant": {"method": "rtn", "group_size": 64}}),
    "composite": (
        "composite",
        {
            "prune": {"method": "sparsegpt", "pattern": "unstructured", "sparsity": 0.25},
            "quant": {"method": "gptq", "group_size": 64},
            "lowrank": {"method": "asvd", "rank": 8},
        },
    ),
    "lowrank": ("composite", {"lowrank": {"method": "svd", "rank": 12}}),
}


@pytest.fixture(scope="module")
def parts(activations):
    """Three linears reading one input, their calibration stats and held-out inputs."""
    from tierlm.kernels.calibration import LayerStats, StatsSpec

    acts = activations(K)
    stats = LayerStats(K, StatsSpec(hessian=True, max_samples=512))
    for _ in range(2):
        stats.update(acts.sample(512))
    torch.manual_seed(0)
    linears = [nn.Linear(K, n, bias=i == 1) for i, n in enumerate(OUT)]
    return linears, stats, acts.sample(7)


def _quantized(linears, stats, name, backend="reference"):
    method, options = METHODS[name]
    return [QuantLinear.from_linear(lin, QUANTIZERS.build(method, **options), stats, backend) for lin in linears]


@pytest.mark.parametrize("name", METHODS)
def test_joined_rows_give_each_parts_product(parts, name):
    linears, stats, x = parts
    modules = _quantized(linears, stats, name)
    expected = [m(x) for m in modules]
    fused = fuse_linears(modules)
    assert fused is not None
    for got, want in zip(fused(x), expected):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


@needs_ort
@pytest.mark.parametrize("name", ["rtn-g64", "gptq-g64", "sparse-int4", "composite"])
def test_joined_fast_kernel_equals_the_parts_fast_kernels(parts, name):
    linears, stats, x = parts
    modules = _quantized(linears, stats, name, backend="fast")
    expected = [m(x) for m in modules]
    fused = fuse_linears(modules)
    # Per output the same int8-activation dot products; only float summation order may differ.
    for got, want in zip(fused(x), expected):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
    assert all(not m._kernels for m in modules)  # their own kernels were released


def test_parts_that_cannot_join_stay_separate(parts):
    linears, stats, x = parts
    smooth = [QuantLinear.from_linear(lin, QUANTIZERS.build("int8", smoothquant_alpha=0.5), stats) for lin in linears]
    assert fuse_linears(smooth) is None  # a smoothing vector per layer has no joint form
    mixed = _quantized(linears[:1], stats, "int8") + _quantized(linears[1:], stats, "rtn-g64")
    assert fuse_linears(mixed) is None
    groups = _quantized(linears[:2], stats, "rtn-g64") + _quantized(linears[2:], stats, "rtn3-g32")
    assert fuse_linears(groups) is None


def test_dense_fusion_shares_the_weights(parts):
    linears, _, x = parts
    copies = [nn.Linear(K, lin.out_features, bias=lin.bias is not None) for lin in linears]
    for copy, lin in zip(copies, linears):
        copy.load_state_dict(lin.state_dict())
    expected = [lin(x) for lin in copies]
    fused = fuse_linears(copies)
    for got, want in zip(fused(x), expected):
        torch.testing.assert_close(got, want)
    # Each module's weight is now a view of the joined one: no second copy, same state dict.
    assert all(c.weight.untyped_storage().data_ptr() == fused.linear.weight.untyped_storage().data_ptr() for c in copies)
    torch.testing.assert_close(copies[2].weight, linears[2].weight)


@needs_ort
def test_composite_runs_as_one_session_equal_to_its_reference(parts):
    from tierlm.kernels.ops.ort_nbits import NBitsMatMul

    linears, stats, x = parts
    (module,) = _quantized(linears[:1], stats, "composite", backend="fast")
    qt = module.qweight
    assert isinstance(qt, CompositeTensor)
    kernel = qt.kernel(torch.device("cpu"))
    assert isinstance(kernel, NBitsMatMul)  # base and correction in one graph
    exact = NBitsMatMul(qt.base.to_group_quant(), accuracy_level=0, lowrank=qt.lowrank)
    torch.testing.assert_close(exact(x), qt.linear_reference(x), rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("name", ["rtn-g64", "int8", "composite", "lowrank"])
def test_output_rows_alone_equal_those_of_the_full_product(parts, name):
    linears, stats, x = parts
    (module,) = _quantized(linears[1:2], stats, name)
    rows = torch.tensor([5, 0, 63, 17])
    # The reference path (W8A8 quantizing its activations per token the same way).
    torch.testing.assert_close(linear_rows(module, x, rows), module(x)[:, rows], rtol=1e-5, atol=1e-5)
    dense = linears[1]
    torch.testing.assert_close(linear_rows(dense, x, rows), dense(x)[:, rows])


@pytest.mark.parametrize("name", ["rtn-g64", "rtn3-g32", "gptq-g64", "int8", "composite"])
@pytest.mark.parametrize("backend", ["reference", pytest.param("fast", marks=needs_ort)])
def test_rows_cut_out_once_equal_those_of_the_full_product(parts, name, backend):
    linears, stats, x = parts
    (module,) = _quantized(linears[1:2], stats, name, backend)
    rows = torch.tensor([5, 0, 63, 17, 40, 41, 2, 9] * 4)  # 32 rows: int3 zero points pack by 32
    cut = rows_of(module, rows)
    # Formats that cut their storage by rows keep their format (and kernel, the same products);
    # the composite, with no such cut, becomes its dense rows (the reference's numerics).
    assert isinstance(cut, QuantLinear) == (name != "composite")
    assert (cut.out_features, cut.in_features) == (len(rows), K)
    expected = module(x)[:, rows] if isinstance(cut, QuantLinear) else linear_rows(module, x, rows)
    torch.testing.assert_close(cut(x), expected, rtol=1e-4, atol=1e-4)


def test_int_zero_points_that_cannot_pack_for_the_rows_fall_back_to_dense_rows(parts):
    linears, stats, x = parts
    (module,) = _quantized(linears[1:2], stats, "rtn-g64")
    rows = torch.tensor([5, 0, 63])
    cut = rows_of(module, rows)
    assert type(cut) is nn.Linear
    torch.testing.assert_close(cut(x), module(x)[:, rows], rtol=1e-5, atol=1e-5)


def test_dense_rows_cut_out_once_are_a_copy(parts):
    linears, _, x = parts
    rows = torch.tensor([3, 1])
    cut = rows_of(linears[1], rows)  # the one with a bias
    torch.testing.assert_close(cut(x), linears[1](x)[:, rows])
    assert cut.weight.untyped_storage().data_ptr() != linears[1].weight.untyped_storage().data_ptr()
