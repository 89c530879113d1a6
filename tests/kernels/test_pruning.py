"""Pruners: exact N:M counts and sparsity levels, and the data-aware methods beating magnitude."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from tierlm.kernels.calibration import LayerStats, StatsSpec
from tierlm.kernels.quant.group import GroupGrid
from tierlm.kernels.sparse import PRUNERS, SparsityPattern, select_mask
from tierlm.kernels.sparse.sparsegpt import sparsegpt_sweep


def _output_error(w, w_hat, x):
    return float((x @ (w - w_hat).t()).norm() / (x @ w.t()).norm())


@pytest.fixture(scope="module")
def calib(outlier_layer):
    return outlier_layer[1]


@pytest.mark.parametrize("name", ["magnitude", "wanda", "sparsegpt"])
@pytest.mark.parametrize("pattern", ["2:4", "4:8", "1:4"])
def test_nm_masks_keep_exactly_n_of_every_m(outlier_layer, name, pattern):
    w, stats, _ = outlier_layer
    result = PRUNERS.build(name, pattern=pattern).prune(w, stats)
    n, m = (int(v) for v in pattern.split(":"))
    groups = result.mask.reshape(w.shape[0], -1, m)
    assert (groups.sum(-1) == n).all()
    assert (result.weight[~result.mask] == 0).all()
    assert result.sparsity == pytest.approx(1 - n / m)


@pytest.mark.parametrize("name", ["magnitude", "wanda"])
@pytest.mark.parametrize("sparsity", [0.3, 0.5, 0.7])
def test_unstructured_levels_are_exact(outlier_layer, name, sparsity):
    w, stats, _ = outlier_layer
    result = PRUNERS.build(name, sparsity=sparsity).prune(w, stats)
    per_row = result.mask.shape[1] - result.mask.sum(1)
    if name == "wanda":  # Wanda compares within each output row
        assert (per_row == round(sparsity * w.shape[1])).all()
    assert int(per_row.sum()) == pytest.approx(sparsity * w.numel(), abs=w.shape[0])
    assert torch.equal(result.weight, w * result.mask)  # no update: kept weights unchanged


def test_sparsegpt_unstructured_level_is_exact_per_block(outlier_layer):
    w, stats, _ = outlier_layer
    result = PRUNERS.build("sparsegpt", sparsity=0.6, block_size=64).prune(w, stats)
    pruned_per_block = (~result.mask).reshape(w.shape[0], -1, 64).sum((0, 2))
    assert (pruned_per_block == round(0.6 * w.shape[0] * 64)).all()


@settings(max_examples=40, deadline=None)
@given(
    rows=st.integers(1, 6),
    groups=st.integers(1, 6),
    nm=st.sampled_from([(2, 4), (1, 4), (4, 8), (3, 8), (8, 16)]),
    ties=st.booleans(),
)
def test_select_mask_nm_counts_hold_even_with_ties(rows, groups, nm, ties):
    n, m = nm
    scores = torch.zeros(rows, groups * m) if ties else torch.rand(rows, groups * m)
    mask = select_mask(scores, SparsityPattern.parse(f"{n}:{m}"))
    assert (mask.reshape(rows, groups, m).sum(-1) == n).all()


@settings(max_examples=40, deadline=None)
@given(
    rows=st.integers(1, 8),
    cols=st.integers(1, 40),
    sparsity=st.floats(0, 0.95),
    scope=st.sampled_from(["row", "layer"]),
)
def test_select_mask_unstructured_counts(rows, cols, sparsity, scope):
    scores = torch.rand(rows, cols)
    mask = select_mask(scores, SparsityPattern.parse("unstructured", sparsity), scope)
    if scope == "row":
        assert ((~mask).sum(1) == round(sparsity * cols)).all()
    else:
        assert int((~mask).sum()) == round(sparsity * rows * cols)
    # Everything kept scores at least as high as everything pruned (within the comparison group).
    if scope == "row":
        for r in range(rows):
            if mask[r].any() and (~mask[r]).any():
                assert scores[r][mask[r]].min() >= scores[r][~mask[r]].max()


@pytest.mark.parametrize("pattern", ["unstructured", "2:4"])
def test_wanda_and_sparsegpt_beat_magnitude_in_layer_output_error(outlier_layer, pattern):
    w, stats, held_out = outlier_layer
    errors = {
        name: _output_error(
            w, PRUNERS.build(name, pattern=pattern, sparsity=0.5).prune(w, stats).weight, held_out
        )
        for name in ("magnitude", "wanda", "sparsegpt")
    }
    assert errors["wanda"] < errors["magnitude"], errors
    assert errors["sparsegpt"] < errors["magnitude"], errors


def test_sparsegpt_joint_quantization_keeps_pruned_at_exact_zero(outlier_layer):
    w, stats, held_out = outlier_layer
    grid = GroupGrid(bits=4, group_size=64)
    sweep = PRUNERS.build("sparsegpt", pattern="2:4").sweep(w, stats, grid)
    assert sweep.codes is not None and sweep.codes.min() >= 0 and sweep.codes.max() <= 15
    g = torch.arange(w.shape[1]) // 64
    dequant = (sweep.codes - sweep.zeros[g].t()) * sweep.scales[g].t()
    assert torch.equal(dequant, sweep.weight)  # the weight returned is what the codes say
    assert (dequant[~sweep.mask] == 0).all()
    assert (sweep.mask.reshape(w.shape[0], -1, 4).sum(-1) == 2).all()
    # Quantizing on top of pruning costs something, but far less than the pruning itself.
    pruned_only = PRUNERS.build("sparsegpt", pattern="2:4").prune(w, stats).weight
    assert _output_error(w, dequant, held_out) < 1.5 * _output_error(w, pruned_only, held_out)


def test_fixed_mask_sweep_never_refills_pruned_weights(outlier_layer):
    w, stats, held_out = outlier_layer
    mask = PRUNERS.build("wanda", pattern="4:8").prune(w, stats).mask
    sweep = sparsegpt_sweep(w, stats.hessian(), mask=mask)
    assert torch.equal(sweep.mask, mask)
    assert (sweep.weight[~mask] == 0).all()
    # Reconstruction of the kept weights lowers the error of the same mask.
    assert _output_error(w, sweep.weight, held_out) < _output_error(w, w * mask, held_out)


def test_registry_and_calibration_requirements(outlier_layer):
    w, _, _ = outlier_layer
    assert set(PRUNERS.names()) >= {"magnitude", "wanda", "sparsegpt"}
    with pytest.raises(ValueError, match="calibration"):
        PRUNERS.build("wanda").prune(w)
    with pytest.raises(ValueError, match="calibration statistics"):
        PRUNERS.build("sparsegpt").prune(w, LayerStats(w.shape[1], StatsSpec()))
    with pytest.raises(ValueError, match="multiple of M"):
        PRUNERS.build("magnitude", pattern="2:4").prune(torch.randn(4, 6))
    with pytest.raises(ValueError):
        SparsityPattern.parse("2:4", 0.75)
    with pytest.raises(ValueError, match="fixes sparsity"):
        PRUNERS.build("wanda", pattern="2:4", sparsity=0.6)  # never silently ignored
    assert PRUNERS.build("magnitude", pattern="1:4").pattern.sparsity == 0.75
    assert PRUNERS.build("magnitude").pattern.sparsity == 0.5
    assert PRUNERS.build("wanda", pattern="2:4").config() == {
        "method": "wanda",
        "pattern": "2:4",
        "sparsity": 0.5,
    }
