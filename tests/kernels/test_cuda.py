"""CUDA fast paths against their references; skipped without a CUDA device."""

import pytest
import torch

from tests.support.skip_check import NEEDS_CUDA
from tierlm.kernels.calibration import LayerStats, StatsSpec
from tierlm.kernels.modules import QuantEmbedding, QuantLinear
from tierlm.kernels.methods import QUANTIZERS

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason=NEEDS_CUDA)


@pytest.fixture(scope="module")
def layer(activations):
    torch.manual_seed(0)
    lin = torch.nn.Linear(640, 256)
    acts = activations(640, n_outliers=3)
    stats = LayerStats(640, StatsSpec(hessian=True, max_samples=256))
    stats.update(acts.sample(512))
    return lin, stats, acts


def _rel(a, b):
    return float((a - b).detach().norm() / b.detach().norm())


@pytest.mark.parametrize("config", [{}, {"smoothquant_alpha": 0.5, "outlier_threshold": 8.0}])
@pytest.mark.parametrize("batch", [1, 32])
def test_cuda_int8_equals_reference(layer, config, batch):
    lin, stats, acts = layer
    m = QuantLinear.from_linear(lin, QUANTIZERS.build("int8", **config), stats, backend="fast")
    x = acts.sample(batch).cuda()
    fast = m(x)
    assert fast.device.type == "cuda"
    m.backend = "reference"
    assert torch.allclose(fast, m(x), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize(
    "name,config",
    [
        ("rtn", {}),
        ("rtn", {"symmetric": True, "group_size": 64}),
        ("rtn", {"bits": 3, "group_size": 32}),
        ("awq", {"n_grid": 4}),
        ("gptq", {"act_order": True}),
    ],
)
@pytest.mark.parametrize("batch", [1, 32])
def test_cuda_int4_equals_reference(layer, name, config, batch):
    lin, stats, acts = layer
    m = QuantLinear.from_linear(lin, QUANTIZERS.build(name, **config), stats, backend="fast")
    x = acts.sample(batch).cuda()
    fast = m(x)
    m.backend = "reference"
    assert _rel(fast, m(x)) < 0.02  # bfloat16 activations and scales inside tinygemm


def test_cuda_reference_paths_match_cpu(layer):
    lin, stats, acts = layer
    x = acts.sample(4)
    for name in ("nf4", "rtn", "int8"):
        m = QuantLinear.from_linear(lin, QUANTIZERS.build(name), stats, backend="reference")
        assert torch.allclose(m(x.cuda()).cpu(), m(x), rtol=1e-4, atol=1e-4)
    emb = QuantEmbedding.from_embedding(torch.nn.Embedding(300, 64), QUANTIZERS.build("nf4"))
    ids = torch.tensor([[1, 299]])
    assert torch.equal(emb(ids.cuda()).cpu(), emb(ids))
