"""Streaming calibration statistics, the recorder hooks, and the inverse-Cholesky factor."""

import pytest
import torch
from tierlm.kernels.calibration import CalibrationRecorder, LayerStats, StatsSpec
from tierlm.kernels.hessian import inverse_cholesky, prepare_hessian


def test_streamed_statistics_equal_whole_batch_statistics():
    x = torch.randn(300, 48, dtype=torch.float64).float()
    stats = LayerStats(48, StatsSpec(hessian=True, max_samples=64))
    for chunk in x.reshape(3, 100, 48):  # leading dims are flattened
        stats.update(chunk.reshape(4, 25, 48))
    assert stats.n_rows == 300
    assert torch.allclose(stats.hessian(), 2 * x.t() @ x / 300, rtol=1e-4, atol=1e-5)
    assert torch.allclose(stats.abs_mean, x.abs().mean(0), rtol=1e-5)
    assert torch.equal(stats.abs_max, x.abs().amax(0))
    assert torch.allclose(stats.col_norm, x.norm(dim=0), rtol=1e-5)


def test_reservoir_is_bounded_and_holds_real_rows():
    x = torch.randn(1000, 8)
    stats = LayerStats(8, StatsSpec(max_samples=50), seed=1)
    for chunk in x.split(37):
        stats.update(chunk)
    sample = stats.samples
    assert sample.shape == (50, 8)
    matches = (sample.unsqueeze(1) == x.unsqueeze(0)).all(-1)
    assert (matches.sum(1) == 1).all()  # each kept row is one input row, no duplicates invented
    origin = matches.float().argmax(1)
    assert len(set(origin.tolist())) == 50
    assert origin.float().mean() > 250  # not just the first rows: later rows replaced them


def test_reservoir_before_it_fills_keeps_everything():
    stats = LayerStats(4, StatsSpec(max_samples=10))
    x = torch.randn(6, 4)
    stats.update(x)
    assert torch.equal(stats.samples, x)


def test_spec_for_needs_collects_only_what_is_asked():
    assert StatsSpec.for_needs({"hessian"}) == StatsSpec(hessian=True, max_samples=0)
    assert StatsSpec.for_needs({"samples", "abs_mean"}, max_samples=7).max_samples == 7
    with pytest.raises(ValueError):
        StatsSpec.for_needs({"gradient"})
    stats = LayerStats(4, StatsSpec())
    assert not stats.has("abs_max")  # nothing seen yet
    stats.update(torch.ones(2, 4))
    assert stats.has("abs_max") and not stats.has("hessian") and not stats.has("samples")
    with pytest.raises(ValueError):
        stats.hessian()


def test_recorder_sees_each_module_input_and_unhooks():
    model = torch.nn.Sequential(torch.nn.Linear(6, 5), torch.nn.ReLU(), torch.nn.Linear(5, 3))
    x = torch.randn(10, 6)
    with CalibrationRecorder({"0": model[0], "2": model[2]}, StatsSpec(hessian=True)) as rec:
        model(x)
    hidden = torch.relu(model[0](x))
    assert torch.allclose(rec.stats["0"].hessian(), 2 * x.t() @ x / 10, atol=1e-5)
    assert torch.allclose(rec.stats["2"].hessian(), 2 * hidden.t() @ hidden / 10, atol=1e-5)
    model(x)
    assert rec.stats["0"].n_rows == 10  # hooks removed on exit


def test_inverse_cholesky_factor_and_dead_channels():
    x = torch.randn(64, 16)
    x[:, 3] = 0  # a channel that never fires
    h, w = prepare_hessian(2 * x.t() @ x / 64, torch.randn(4, 16))
    assert h[3, 3] == 1 and (w[:, 3] == 0).all()
    u = inverse_cholesky(h, percdamp=0.01)
    damped = h + 0.01 * torch.diag(h).mean() * torch.eye(16)
    assert torch.allclose(u, torch.triu(u))
    assert torch.allclose(u.t() @ u, torch.linalg.inv(damped), rtol=1e-3, atol=1e-4)


def test_inverse_cholesky_raises_damping_for_indefinite_input():
    h = torch.diag(torch.tensor([1.0, 1.0, -0.5]))  # not PSD: the first damping is not enough
    u = inverse_cholesky(h, percdamp=0.01)
    assert torch.isfinite(u).all()
