"""Quantized modules: every fast path equals its reference; embedding, tied output, swapping."""

import pytest
import torch
from tierlm.kernels.calibration import LayerStats, StatsSpec
from tierlm.kernels.modules import QuantEmbedding, QuantLinear, quantize_linears
from tierlm.kernels.methods import QUANTIZERS

needs_ort = pytest.mark.skipif(
    not __import__("tierlm.kernels.ops.ort_nbits", fromlist=["x"]).ort_available(),
    reason="onnxruntime not installed",
)


@pytest.fixture(scope="module")
def layer(activations):
    torch.manual_seed(0)
    lin = torch.nn.Linear(256, 96)
    acts = activations(256, n_outliers=3)
    stats = LayerStats(256, StatsSpec(hessian=True, max_samples=256))
    stats.update(acts.sample(512))
    return lin, stats, acts


def _rel(a, b):
    return float((a - b).detach().norm() / b.detach().norm())


@pytest.mark.parametrize(
    "config",
    [
        {},
        {"smoothquant_alpha": 0.5},
        {"outlier_threshold": 8.0},
        {"smoothquant_alpha": 0.8, "outlier_threshold": 8.0},
    ],
)
@pytest.mark.parametrize("batch", [1, 32])
def test_int8_kernels_against_the_reference(layer, config, batch):
    from tierlm.kernels.ops.int8_mm import Int8MatMul

    lin, stats, acts = layer
    m = QuantLinear.from_linear(lin, QUANTIZERS.build("int8", **config), stats, backend="fast")
    x = acts.sample(batch)
    fast = m(x)
    m.backend = "reference"
    reference = m(x)
    # oneDNN's _int_mm and the CPU fast path (onnxruntime's MatMulInteger): the reference's
    # per-token int8 activations; int32 accumulation is exact, only the float rescale order
    # differs from the reference's float product.
    exact = Int8MatMul(m.qweight)(x)
    torch.testing.assert_close(exact, reference - m.bias, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(fast - m.bias, exact, rtol=1e-6, atol=1e-6)
    assert _rel(fast, lin(x)) < 0.05


@needs_ort
def test_int8_fast_path_does_not_saturate_at_full_scale_codes():
    """Every code at ±127 against full-scale activations: AVX2's u8s8 integer kernel sums pairs
    of products in int16 and would clip them (a 2x too small result here)."""
    from tierlm.kernels.ops.ort_nbits import Int8MatMulInteger
    from tierlm.kernels.quant.int8 import Int8Tensor

    n, k = 16, 256
    codes = torch.full((n, k), 127, dtype=torch.int8)
    codes[1::2] = -127
    qt = Int8Tensor(codes, torch.full((n,), 0.01))
    x = torch.ones(3, k)
    x[1, ::2] = -1.0
    x[2] = -1.0
    torch.testing.assert_close(Int8MatMulInteger(qt)(x), qt.linear_reference(x), rtol=1e-6, atol=1e-4)


GROUP_CONFIGS = [
    ("rtn", {"bits": 4, "group_size": 128}),
    ("rtn", {"bits": 4, "group_size": 32, "symmetric": True}),
    ("rtn", {"bits": 3, "group_size": 64}),
    ("awq", {"n_grid": 4}),
    ("gptq", {"group_size": 64, "act_order": True}),
]


@needs_ort
@pytest.mark.parametrize("name,config", GROUP_CONFIGS)
def test_int4_kernel_layout_is_exact_with_float_activations(layer, name, config):
    from tierlm.kernels.ops.ort_nbits import NBitsMatMul

    lin, stats, acts = layer
    qt = QUANTIZERS.build(name, **config).quantize(lin.weight, stats)
    x = acts.sample(5)
    assert torch.allclose(NBitsMatMul(qt, accuracy_level=0)(x), qt.linear_reference(x), rtol=1e-5, atol=1e-4)


@needs_ort
@pytest.mark.parametrize("name,config", GROUP_CONFIGS)
@pytest.mark.parametrize("batch", [1, 32])
def test_int4_fast_path_equals_reference(layer, name, config, batch):
    lin, stats, acts = layer
    m = QuantLinear.from_linear(lin, QUANTIZERS.build(name, **config), stats, backend="fast")
    x = acts.sample(batch)
    fast = m(x)
    m.backend = "reference"
    # The fast path quantizes activations to int8 per block (MLAS accuracy level 4); with 25x
    # outlier channels in a block the block's int8 step is coarse for the rest, hence 5%.
    assert _rel(fast, m(x)) < 0.05


def test_nf4_has_no_fast_path_and_uses_the_reference(layer):
    lin, stats, acts = layer
    qt = QUANTIZERS.build("nf4").quantize(lin.weight)
    m = QuantLinear(qt, lin.bias)
    with pytest.raises(RuntimeError):
        m.backend = "fast"
    x = acts.sample(3)
    assert torch.allclose(m(x), x @ qt.dequantize().t() + lin.bias, atol=1e-5)


def test_quant_linear_keeps_leading_dims_bias_and_dtype(layer):
    lin, stats, acts = layer
    m = QuantLinear.from_linear(lin, QUANTIZERS.build("int8"))
    x = acts.sample(6).reshape(2, 3, 256).to(torch.bfloat16)
    y = m(x)
    assert y.shape == (2, 3, 96) and y.dtype == torch.bfloat16
    m.backend = "reference"
    assert _rel(y.float(), m(x).float()) < 0.01  # bfloat16 output


@pytest.mark.parametrize("name", ["int8", "rtn", "nf4"])
def test_quant_embedding_lookup_and_tied_output(name):
    torch.manual_seed(1)
    emb = torch.nn.Embedding(512, 128)
    emb.embed_scale = torch.tensor(128**0.5)  # as Gemma's scaled embedding carries it
    qemb = QuantEmbedding.from_embedding(emb, QUANTIZERS.build(name))
    ids = torch.tensor([[3, 511, 3], [0, 7, 100]])
    table = qemb.qweight.dequantize()
    assert torch.allclose(qemb(ids), table[ids] * 128**0.5, rtol=1e-6)
    head = qemb.tied_output()
    assert head.qweight is qemb.qweight  # one copy of the table serves both
    h = torch.randn(4, 128)
    assert _rel(head(h), h @ table.t()) < 0.02
    assert _rel(head(h), h @ emb.weight.t()) < 0.15


def test_quantize_linears_swaps_chosen_layers(layer):
    model = torch.nn.Sequential(torch.nn.Linear(256, 128), torch.nn.GELU(), torch.nn.Linear(128, 64))
    x = torch.randn(4, 256)
    ref = model(x)

    def choose(name, module):
        return QUANTIZERS.build("int8") if name == "0" else None

    swapped = quantize_linears(model, choose)
    assert (
        list(swapped) == ["0"] and isinstance(model[0], QuantLinear) and isinstance(model[2], torch.nn.Linear)
    )
    assert _rel(model(x), ref) < 0.05


@needs_ort
def test_small_weights_decode_on_one_thread_and_prefill_on_all(layer):
    from tierlm.kernels.ops.ort_nbits import SERIAL_MAX_ROWS, Int8MatMulInteger, NBitsMatMul

    lin, stats, acts = layer
    x = acts.sample(SERIAL_MAX_ROWS + 8)
    previous = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        for kernel in (
            NBitsMatMul(QUANTIZERS.build("rtn", group_size=64).quantize(lin.weight)),
            Int8MatMulInteger(QUANTIZERS.build("int8").quantize(lin.weight)),
        ):
            assert set(kernel._sessions._by_threads) == {1}  # the decode session, built at once
            one = kernel(x[:1])
            chunk = kernel(x)
            assert set(kernel._sessions._by_threads) == {1, 2}
            # Rows are independent: the same numbers whichever session computed them.
            torch.testing.assert_close(chunk[:1], one, rtol=1e-6, atol=1e-6)
    finally:
        torch.set_num_threads(previous)
