"""Each quantizer's error bound, storage round trips, and GPTQ/AWQ versus RTN."""

import json

import pytest
import torch
from safetensors.torch import load_file, save_file
from tierlm.kernels.calibration import LayerStats, StatsSpec
from tierlm.kernels.methods import QUANTIZERS, read_quantized
from tierlm.kernels.quant import QuantizedTensor
from tierlm.kernels.quant.group import GroupQuantTensor
from tierlm.kernels.quant.nf4 import NF4_MAX_HALF_GAP

REL = 1e-5  # float32 rounding slack on top of each theoretical bound


def _scale_per_element(qt: GroupQuantTensor) -> torch.Tensor:
    return qt.scales.to(torch.float32)[qt.group_index()].t()


@pytest.mark.parametrize("dist", ["gaussian", "heavy_tailed"])
@pytest.mark.parametrize(
    "bits,group_size,symmetric",
    [(4, 128, False), (4, 64, True), (4, 32, False), (3, 128, True), (3, 64, False)],
)
def test_rtn_error_is_at_most_half_a_step(make_weight, dist, bits, group_size, symmetric):
    w = make_weight(dist, 64, 256, seed=bits * group_size)
    qt = QUANTIZERS.build("rtn", bits=bits, group_size=group_size, symmetric=symmetric).quantize(w)
    step = _scale_per_element(qt)
    assert ((qt.dequantize() - w).abs() <= step * (0.5 + REL) + 1e-9).all()
    assert qt.nbytes < w.numel() * bits / 8 * 1.2  # packed: codes plus small per-group metadata


@pytest.mark.parametrize("dist", ["gaussian", "heavy_tailed"])
def test_int8_error_is_at_most_half_a_step_per_row(make_weight, dist):
    w = make_weight(dist, 64, 256, seed=7)
    qt = QUANTIZERS.build("int8").quantize(w)
    assert ((qt.dequantize() - w).abs() <= qt.scale.unsqueeze(1) * (0.5 + REL)).all()


def test_smoothquant_bound_holds_in_smoothed_coordinates_and_outliers_stay_float(make_weight, activations):
    k = 128
    acts = activations(k, n_outliers=3)
    stats = LayerStats(k)
    stats.update(acts.sample(256))
    w = make_weight("gaussian", 32, k, 2)
    qt = QUANTIZERS.build("int8", smoothquant_alpha=0.5, outlier_threshold=8.0).quantize(w, stats)
    assert set(qt.outlier_idx.tolist()) == set(acts.outliers.tolist())
    err = (qt.dequantize() - w) * qt.smooth  # back in the coordinates that were quantized
    inlier = torch.ones(k, dtype=torch.bool)
    inlier[qt.outlier_idx] = False
    assert (err[:, inlier].abs() <= qt.scale.unsqueeze(1) * (0.5 + REL)).all()
    # Outlier columns only lose float16 rounding.
    assert torch.allclose(qt.dequantize()[:, ~inlier], w[:, ~inlier], rtol=1e-3, atol=1e-7)
    # s_j = max|X_j|^α / max|W_j|^(1-α)
    expected = stats.abs_max.pow(0.5) / w.abs().amax(0).pow(0.5)
    assert torch.allclose(qt.smooth, expected, rtol=1e-5)


def test_smoothquant_alpha_search_picks_the_grid_point_with_least_output_error(make_weight, activations):
    from tierlm.kernels.calibration import StatsSpec

    k = 128
    acts = activations(k, n_outliers=3)
    stats = LayerStats(k, StatsSpec(max_samples=256))
    stats.update(acts.sample(512))
    w = make_weight("gaussian", 32, k, 2)
    x = stats.samples

    def error(qt) -> float:
        return float((qt.linear_reference(x) - x @ w.t()).pow(2).sum())

    fixed = {a: error(QUANTIZERS.build("int8", smoothquant_alpha=a).quantize(w, stats)) for a in (0.0, 0.25, 0.5, 0.75, 1.0)}
    searched = QUANTIZERS.build("int8", alpha_grid=5).quantize(w, stats)
    assert error(searched) == pytest.approx(min(fixed.values()), rel=1e-6)
    # On outlier-heavy inputs smoothing pays: the best alpha beats none at all.
    assert error(searched) < error(QUANTIZERS.build("int8").quantize(w, stats))
    with pytest.raises(ValueError, match="alpha_grid"):
        QUANTIZERS.build("int8", alpha_grid=5, smoothquant_alpha=0.5)


@pytest.mark.parametrize("dist", ["gaussian", "heavy_tailed"])
@pytest.mark.parametrize("double_quant", [True, False])
def test_nf4_error_within_half_the_widest_level_gap(make_weight, dist, double_quant):
    w = make_weight(dist, 64, 256, seed=11)
    qt = QUANTIZERS.build("nf4", double_quant=double_quant).quantize(w)
    absmax = qt.block_absmax().reshape(64, -1, 1)
    blocks = w.reshape(64, -1, qt.block_size)
    clipped = (blocks.abs() - absmax).clamp(min=0)  # only if double quant shrank the absmax
    bound = absmax * NF4_MAX_HALF_GAP * (1 + REL) + clipped + 1e-9
    assert ((qt.dequantize().reshape(blocks.shape) - blocks).abs() <= bound).all()
    true_absmax = blocks.abs().amax(-1).reshape(-1)
    if double_quant:  # 8-bit absmax: half a step of its block's int8 scale
        step = qt.absmax_scale[torch.arange(true_absmax.numel()) // qt.dq_block_size]
        assert ((qt.block_absmax() - true_absmax).abs() <= step * (0.5 + REL)).all()
        assert qt.nbytes < w.numel() * 0.5 + true_absmax.numel() * 1.1
    else:
        assert torch.equal(qt.block_absmax(), true_absmax)


def test_gptq_with_uncorrelated_inputs_is_rtn(make_weight):
    # With a diagonal Hessian the inverse-Cholesky factor is diagonal: no error feedback at all.
    w = make_weight("gaussian", 32, 256, 3)
    stats = LayerStats(256, StatsSpec(hessian=True))
    stats.xtx = torch.diag(torch.rand(256) + 0.5)
    stats.n_rows = 2
    gptq = QUANTIZERS.build("gptq", bits=4, group_size=64).quantize(w, stats)
    rtn = QUANTIZERS.build("rtn", bits=4, group_size=64).quantize(w)
    assert torch.equal(gptq.qweight, rtn.qweight) and torch.equal(gptq.scales, rtn.scales)


def _out_err(qt: QuantizedTensor, w: torch.Tensor, x: torch.Tensor) -> float:
    ref = x @ w.t()
    return float((qt.linear_reference(x) - ref).norm() / ref.norm())


@pytest.mark.parametrize("bits", [4, 3])
def test_gptq_and_awq_beat_rtn_on_held_out_inputs(outlier_layer, bits):
    w, stats, held_out = outlier_layer
    rtn = _out_err(QUANTIZERS.build("rtn", bits=bits).quantize(w), w, held_out)
    gptq = _out_err(QUANTIZERS.build("gptq", bits=bits).quantize(w, stats), w, held_out)
    gptq_ao = _out_err(QUANTIZERS.build("gptq", bits=bits, act_order=True).quantize(w, stats), w, held_out)
    awq = _out_err(QUANTIZERS.build("awq", bits=bits, n_grid=10).quantize(w, stats), w, held_out)
    assert gptq < 0.6 * rtn and gptq_ao < 0.6 * rtn
    assert awq < 0.85 * rtn


def test_awq_clip_search_lowers_held_out_error(outlier_layer):
    w, stats, held_out = outlier_layer
    clipped = _out_err(QUANTIZERS.build("awq", n_grid=10).quantize(w, stats), w, held_out)
    unclipped = _out_err(QUANTIZERS.build("awq", n_grid=10, clip_search=False).quantize(w, stats), w, held_out)
    assert clipped < 0.97 * unclipped


def test_awq_never_loses_to_rtn_on_its_own_samples(outlier_layer):
    w, stats, _ = outlier_layer
    x = stats.samples
    rtn = _out_err(QUANTIZERS.build("rtn").quantize(w), w, x)
    awq = _out_err(QUANTIZERS.build("awq", n_grid=5, clip_search=False).quantize(w, stats), w, x)
    assert awq <= rtn


def test_gptq_act_order_records_groups_of_equal_size(outlier_layer):
    w, stats, _ = outlier_layer
    qt = QUANTIZERS.build("gptq", act_order=True).quantize(w, stats)
    assert torch.equal(torch.bincount(qt.g_idx.long()), torch.full((w.shape[1] // 128,), 128))


ALL_CONFIGS = [
    ("rtn", {}),
    ("rtn", {"bits": 3, "group_size": 32, "symmetric": True}),
    ("awq", {"n_grid": 4}),
    ("gptq", {"act_order": True}),
    ("rtn", {"group_size": 32, "zero_point": "float"}),
    ("gptq", {"group_size": 64, "zero_point": "float"}),
    ("nf4", {}),
    ("nf4", {"double_quant": False}),
    ("int8", {}),
    ("int8", {"smoothquant_alpha": 0.5, "outlier_threshold": 8.0}),
]


@pytest.mark.parametrize("name,config", ALL_CONFIGS)
def test_artifact_round_trip_through_safetensors(tmp_path, outlier_layer, name, config):
    w, stats, _ = outlier_layer
    quantizer = QUANTIZERS.build(name, **config)
    qt = quantizer.quantize(w, stats)
    state, meta = qt.to_state_dict("model.layers.0.mlp.up_proj")
    save_file(state, tmp_path / "m.safetensors")
    meta = json.loads(json.dumps(meta))
    json.dumps(quantizer.config())
    back = read_quantized(
        load_file(tmp_path / "m.safetensors"), "model.layers.0.mlp.up_proj", meta
    )
    assert type(back) is type(qt) and back.shape == qt.shape == tuple(w.shape)
    assert torch.equal(back.dequantize(), qt.dequantize())
    assert back.nbytes == qt.nbytes == sum(t.numel() * t.element_size() for t in state.values())
    rows = torch.tensor([[0, 5], [127, 5]])
    assert torch.equal(qt.dequantize_rows(rows), qt.dequantize()[rows])


def test_registry_and_calibration_requirements(make_weight):
    assert set(QUANTIZERS.names()) >= {"int8", "rtn", "nf4", "awq", "gptq"}
    with pytest.raises(ValueError, match="unknown quantizer"):
        QUANTIZERS.build("int5")
    with pytest.raises(ValueError, match="hessian"):
        QUANTIZERS.build("gptq").quantize(make_weight("gaussian", 8, 128, 0))
    with pytest.raises(ValueError, match="not collected"):
        stats = LayerStats(128)  # channel stats only
        stats.update(torch.randn(4, 128))
        QUANTIZERS.build("awq").quantize(make_weight("gaussian", 8, 128, 0), stats)
    with pytest.raises(ValueError):
        QUANTIZERS.build("rtn", group_size=48)
