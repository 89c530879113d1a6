"""Low rank: exact truncation errors, whitened SVD beating plain SVD, and rank budgets."""

import itertools

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from tierlm.kernels.lowrank import (
    LayerSpectrum,
    LowRankTensor,
    allocate_ranks,
    budget_for_reduction,
    FACTORIZERS,
)


def _output_sq_error(w, w_hat, x):
    return float((x @ (w - w_hat).t()).double().pow(2).sum())


@pytest.mark.parametrize("name", ["svd", "asvd"])
def test_full_rank_reconstructs_and_factors_chain(outlier_layer, name):
    w, stats, _ = outlier_layer
    d = FACTORIZERS.build(name).decompose(w, stats)
    full = d.truncate(min(w.shape), dtype="float32")
    assert torch.allclose(full.dequantize(), w, atol=2e-5)
    lr = d.truncate(8, dtype="float16")
    assert lr.rank == 8 and lr.left.shape == (128, 8) and lr.right.shape == (8, 256)
    assert lr.nbytes == 8 * (128 + 256) * 2


def test_svd_tail_energy_is_the_weight_error(outlier_layer):
    w, _, _ = outlier_layer
    d = FACTORIZERS.build("svd").decompose(w)
    for r in (4, 32, 100):
        err = float((w - d.truncate(r, "float32").dequantize()).double().pow(2).sum())
        assert err == pytest.approx(d.tail_energy(r), rel=1e-3)


def test_whitened_tail_energy_is_the_calibration_output_error(activations):
    # Plain calibration rows (no reservoir), so XᵀX is known exactly; tiny damping.
    from tierlm.kernels.calibration import LayerStats, StatsSpec

    acts = activations(64, seed=4)
    x = acts.sample(4096)
    stats = LayerStats(64, StatsSpec(hessian=True))
    stats.update(x)
    w = torch.randn(48, 64, generator=torch.Generator().manual_seed(0))
    d = FACTORIZERS.build("asvd", percdamp=1e-6).decompose(w, stats)
    for r in (4, 16):
        err = _output_sq_error(w, d.truncate(r, "float32").dequantize(), x)
        # H = 2XᵀX/n, so σ² measures 2/n times the summed squared output error.
        assert err * 2 / x.shape[0] == pytest.approx(d.tail_energy(r), rel=2e-3)


@pytest.mark.parametrize("rank", [8, 32, 64])
def test_activation_aware_svd_beats_svd_at_equal_rank(outlier_layer, rank):
    w, stats, held_out = outlier_layer
    errs = {
        name: _output_sq_error(
            w, FACTORIZERS.build(name).decompose(w, stats).truncate(rank).dequantize(), held_out
        )
        for name in ("svd", "asvd")
    }
    assert errs["asvd"] < errs["svd"], errs


def test_lowrank_tensor_reference_uses_thin_products(outlier_layer):
    w, _, held_out = outlier_layer
    lr = FACTORIZERS.build("svd").decompose(w).truncate(16, "float32")
    assert torch.allclose(lr.linear_reference(held_out), held_out @ lr.dequantize().t(), atol=1e-5)
    rows = torch.tensor([[0, 5], [127, 3]])
    assert torch.allclose(lr.dequantize_rows(rows), lr.dequantize()[rows], atol=1e-6)
    with pytest.raises(ValueError, match="chain"):
        LowRankTensor(torch.zeros(4, 2), torch.zeros(3, 5))


def _spectra():
    g = torch.Generator().manual_seed(0)
    return {
        "a": LayerSpectrum(torch.sort(torch.rand(24, generator=g), descending=True).values, 24, 40),
        "b": LayerSpectrum(torch.linspace(3, 0.1, 16), 16, 16),
        "c": LayerSpectrum(torch.tensor([5.0, 0.5, 0.1, 0.01]), 40, 4),
    }


def _cost(spectra, ranks, bpp=1.0):
    return sum(spectra[n].params(r) * bpp for n, r in ranks.items())


def _relative_error(spectra, ranks):
    return sum(float(s.sigma[ranks[n] :].pow(2).sum() / s.sigma.pow(2).sum()) for n, s in spectra.items())


@settings(max_examples=40, deadline=None)
@given(budget=st.integers(0, 3000), bpp=st.sampled_from([1.0, 2.0]), min_rank=st.integers(0, 1))
def test_allocation_meets_budget_and_caps(budget, bpp, min_rank):
    spectra = _spectra()
    floor = _cost(spectra, {n: min_rank for n in spectra}, bpp)
    if budget < floor:
        with pytest.raises(ValueError, match="minimum-rank"):
            allocate_ranks(spectra, budget, bpp, min_rank)
        return
    ranks = allocate_ranks(spectra, budget, bpp, min_rank)
    assert _cost(spectra, ranks, bpp) <= budget
    for name, r in ranks.items():
        assert min_rank <= r <= spectra[name].max_rank
        assert spectra[name].params(r) < spectra[name].out_features * spectra[name].in_features
    # Greedy is within one item of optimal: no single unused step still fits.
    spent = _cost(spectra, ranks, bpp)
    for name, s in spectra.items():
        if ranks[name] < s.max_rank:
            assert spent + (s.out_features + s.in_features) * bpp > budget or s.sigma[ranks[name]] == 0


def _brute_force(spectra, budget):
    combos = itertools.product(*(range(s.max_rank + 1) for s in spectra.values()))
    feasible = (dict(zip(spectra, c)) for c in combos)
    return min(
        (r for r in feasible if _cost(spectra, r) <= budget), key=lambda r: _relative_error(spectra, r)
    )


@pytest.mark.parametrize("budget", [300, 800, 1500])
def test_allocation_is_optimal_up_to_one_step(budget):
    spectra = _spectra()
    ranks = allocate_ranks(spectra, budget)
    best = _brute_force(spectra, budget)
    # The fractional-knapsack bound: greedy loses at most the gain of one step that did not fit.
    largest_step = max(float(s.sigma[0] ** 2 / s.sigma.pow(2).sum()) for s in spectra.values())
    assert _relative_error(spectra, best) <= _relative_error(spectra, ranks) + 1e-9
    assert _relative_error(spectra, ranks) <= _relative_error(spectra, best) + largest_step
    if budget in (800, 1500):  # budgets where nothing is left over: greedy is exactly optimal
        assert ranks == best


def test_budget_for_reduction():
    spectra = _spectra()
    dense = 24 * 40 + 16 * 16 + 40 * 4
    assert budget_for_reduction(spectra, 0.2) == int(dense * 0.8)
    ranks = allocate_ranks(spectra, budget_for_reduction(spectra, 0.2), min_rank=1)
    assert _cost(spectra, ranks) <= 0.8 * dense
