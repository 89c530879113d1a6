"""CUDA paths of the sparse and composite formats; skipped without a CUDA device."""

import pytest
import torch

from tests.support.skip_check import NEEDS_CUDA
from tierlm.kernels.modules import QuantLinear
from tierlm.kernels.ops.sparse_mm import SemiStructuredMatMul, semi_structured_supports
from tierlm.kernels.methods import QUANTIZERS
from tierlm.kernels.sparse import SparseTensor, SparsityPattern, select_mask

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason=NEEDS_CUDA)


def _rel(a, b):
    return float((a.float() - b.float()).norm() / b.float().norm())


@pytest.mark.parametrize("batch", [1, 8, 64])
def test_semi_structured_two_four_matches_dense(batch):
    if torch.cuda.get_device_capability()[0] < 8:
        pytest.skip(f"{NEEDS_CUDA} with 2:4 sparse tensor cores (sm80+)")
    g = torch.Generator().manual_seed(0)
    w = torch.randn(2048, 640, generator=g) * 0.02
    p = SparsityPattern.parse("2:4")
    st = SparseTensor.from_dense(w, select_mask(w.abs(), p), p)
    assert semi_structured_supports(st, "cuda")
    x = torch.randn(batch, 640, generator=g).cuda()
    fast = SemiStructuredMatMul(st, "cuda")(x)
    expected = x @ st.dequantize().cuda().t()
    assert _rel(fast, expected) < 2e-3  # float16 products, float32 reference


@pytest.mark.parametrize(
    "config",
    [
        {"prune": {"method": "magnitude", "pattern": "2:4"}},
        {"prune": {"method": "magnitude", "pattern": "2:4"}, "quant": {"method": "rtn", "group_size": 128}},
        {
            "prune": {"method": "magnitude", "pattern": "2:4"},
            "quant": {"method": "rtn", "group_size": 128},
            "lowrank": {"method": "svd", "rank": 32},
        },
        {"lowrank": {"method": "svd", "rank": 32}},
    ],
)
def test_quant_linear_on_cuda_matches_reference(config):
    torch.manual_seed(0)
    lin = torch.nn.Linear(640, 256)
    qt = QUANTIZERS.build("composite", **config).quantize(lin.weight.detach())
    fast = QuantLinear(qt, lin.bias, backend="auto")
    x = torch.randn(4, 640)
    y = fast(x.cuda())
    assert y.device.type == "cuda"
    reference = QuantLinear(qt, lin.bias, backend="reference")(x)
    assert _rel(y.cpu(), reference) < 0.02  # bfloat16 (tinygemm) / float16 activations
