"""The composite W ≈ dequant(Q(M ⊙ W)) + L·R: error below its parts, storage, budgeted ranks."""

import json

import pytest
import torch
from safetensors.torch import load_file, save_file
from tierlm.kernels.composite import CompositeCompressor, CompositeTensor
from tierlm.kernels.lowrank import LayerSpectrum, LowRankTensor, allocate_ranks
from tierlm.kernels.methods import QUANTIZERS, read_quantized
from tierlm.kernels.quant import QuantizedTensor
from tierlm.kernels.sparse import SparseQuantTensor, SparseTensor

BASE = {
    "prune": {"method": "wanda", "pattern": "2:4"},
    "quant": {"method": "gptq", "bits": 4, "group_size": 64},
}


def _output_error(w, qt, x):
    return float((x @ (w - qt.dequantize()).t()).norm() / (x @ w.t()).norm())


@pytest.mark.parametrize("lowrank", ["asvd", "svd"])
def test_composite_error_is_below_each_part(outlier_layer, lowrank):
    w, stats, held_out = outlier_layer
    rank = 16
    composite = QUANTIZERS.build("composite", **BASE, lowrank={"method": lowrank, "rank": rank}).quantize(
        w, stats
    )
    base_only = QUANTIZERS.build("composite", **BASE).quantize(w, stats)
    lowrank_only = QUANTIZERS.build("composite", lowrank={"method": lowrank, "rank": rank}).quantize(w, stats)
    assert isinstance(composite, CompositeTensor) and isinstance(base_only, SparseQuantTensor)
    assert isinstance(lowrank_only, LowRankTensor)
    e = {
        k: _output_error(w, qt, held_out)
        for k, qt in [("composite", composite), ("base", base_only), ("lowrank", lowrank_only)]
    }
    assert e["composite"] < e["base"] and e["composite"] < e["lowrank"], e
    # The correction costs rank·(N+K) float16 values on top of the base.
    assert composite.nbytes == base_only.nbytes + rank * sum(w.shape) * 2


def test_activation_aware_correction_beats_plain_on_output_error(outlier_layer):
    w, stats, held_out = outlier_layer
    errs = {
        m: _output_error(
            w,
            QUANTIZERS.build("composite", **BASE, lowrank={"method": m, "rank": 16}).quantize(w, stats),
            held_out,
        )
        for m in ("svd", "asvd")
    }
    assert errs["asvd"] < errs["svd"], errs


@pytest.mark.parametrize(
    "prune,quant",
    [
        ({"method": "magnitude", "pattern": "4:8"}, {"method": "rtn", "group_size": 64}),
        ({"method": "wanda", "sparsity": 0.5}, {"method": "gptq", "group_size": 64}),
        ({"method": "sparsegpt", "pattern": "2:4"}, {"method": "gptq", "group_size": 64, "bits": 3}),
        ({"method": "sparsegpt", "sparsity": 0.6}, {"method": "rtn", "group_size": 128, "symmetric": True}),
    ],
)
def test_base_keeps_the_mask_exactly(outlier_layer, prune, quant):
    w, stats, _ = outlier_layer
    base = CompositeCompressor(prune=prune, quant=quant).base(w, stats)
    mask = base.layout.decode()
    assert (base.dequantize()[~mask] == 0).all()
    assert base.layout.sparsity == pytest.approx(0.5 if "pattern" in prune else prune["sparsity"], abs=1e-3)


def test_joint_sparsegpt_quantization_beats_quantizing_after_pruning(outlier_layer):
    w, stats, held_out = outlier_layer
    prune = {"method": "sparsegpt", "pattern": "2:4"}
    joint = CompositeCompressor(prune=prune, quant={"method": "gptq", "group_size": 64}).quantize(w, stats)
    after = CompositeCompressor(prune=prune, quant={"method": "rtn", "group_size": 64}).quantize(w, stats)
    assert _output_error(w, joint, held_out) < _output_error(w, after, held_out)


def test_float_sparse_base_without_quantization(outlier_layer):
    w, stats, _ = outlier_layer
    qt = CompositeCompressor(prune={"method": "wanda", "sparsity": 0.5}).quantize(w, stats)
    assert isinstance(qt, SparseTensor) and qt.values.dtype == torch.float16


def test_round_trip_through_safetensors_with_layer_metadata(outlier_layer, tmp_path):
    w, stats, held_out = outlier_layer
    compressor = QUANTIZERS.build("composite", **BASE, lowrank={"method": "asvd", "rank": 12})
    qt = compressor.quantize(w, stats)
    state, meta = qt.to_state_dict("model.layers.0.mlp.up_proj")
    save_file(state, tmp_path / "model.safetensors")
    meta = json.loads(json.dumps(meta))  # what tierlm_compression.json will hold
    assert {k: meta[k] for k in ("format", "pattern", "sparsity", "bits", "group_size", "rank")} == {
        "format": "composite",
        "pattern": "2:4",
        "sparsity": 0.5,
        "bits": 4,
        "group_size": 64,
        "rank": 12,
    }
    back = read_quantized(
        load_file(tmp_path / "model.safetensors"), "model.layers.0.mlp.up_proj", meta
    )
    assert torch.equal(back.dequantize(), qt.dequantize())
    assert torch.allclose(
        back.linear_reference(held_out), held_out @ qt.dequantize().t(), rtol=1e-4, atol=1e-4
    )
    moved = back.to("cpu")  # every format rebuilds from its own tensors and metadata
    assert type(moved) is CompositeTensor and torch.equal(moved.dequantize(), qt.dequantize())
    config = json.loads(json.dumps(compressor.config()))
    assert (
        config["prune"]["method"] == "wanda"
        and config["quant"]["method"] == "gptq"
        and config["lowrank"]["rank"] == 12
    )
    headline = {k: config[k] for k in ("method", "bits", "group_size", "pattern", "sparsity", "rank")}
    assert headline == {
        "method": "composite", "bits": 4, "group_size": 64, "pattern": "2:4", "sparsity": 0.5, "rank": 12,
    }  # fmt: skip


def test_budgeted_ranks_through_the_pipeline_hooks(outlier_layer, make_weight):
    w, stats, _ = outlier_layer
    weights = {"a": w, "b": make_weight("heavy_tailed", 128, 256, seed=9)}
    compressor = CompositeCompressor(**BASE, lowrank={"method": "asvd"})
    bases = {n: compressor.base(x, stats) for n, x in weights.items()}
    decs = {n: compressor.decompose_residual(x, bases[n], stats) for n, x in weights.items()}
    budget = 40 * (128 + 256) * 2  # bytes of float16 factors for 40 ranks in all
    ranks = allocate_ranks(
        {n: LayerSpectrum(d.sigma, *weights[n].shape) for n, d in decs.items()}, budget, 2.0
    )
    assert sum(ranks.values()) == 40
    out = {n: compressor.assemble(bases[n], decs[n], ranks[n]) for n in weights}
    assert sum(qt.nbytes - bases[n].nbytes for n, qt in out.items()) <= budget
    with pytest.raises(ValueError, match="rank"):
        compressor.quantize(w, stats)  # no fixed rank configured


def test_needs_and_configuration_errors(outlier_layer):
    w, _, _ = outlier_layer
    assert CompositeCompressor(**BASE, lowrank={"method": "asvd", "rank": 4}).needs == {"sq_sum", "hessian"}
    assert CompositeCompressor(prune={"method": "magnitude"}, quant={"method": "rtn"}).needs == set()
    with pytest.raises(ValueError, match="at least one"):
        CompositeCompressor()
    with pytest.raises(ValueError, match="quant method"):
        CompositeCompressor(quant={"method": "awq"})
    with pytest.raises(ValueError, match="calibration"):
        CompositeCompressor(**BASE).quantize(w)
