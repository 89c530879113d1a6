"""Sparse storage: bit packing, mask encodings and tensor round trips (exact), and their sizes."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors.torch import load_file, save_file
from tierlm.kernels.packing import pack_bits, unpack_bits
from tierlm.kernels.methods import read_quantized
from tierlm.kernels.quant import QuantizedTensor
from tierlm.kernels.quant.group import group_rtn
from tierlm.kernels.sparse import SparseLayout, SparseQuantTensor, SparseTensor, SparsityPattern, select_mask


@settings(max_examples=60, deadline=None)
@given(bits=st.integers(1, 8), count=st.integers(0, 200), seed=st.integers(0, 2**16))
def test_pack_bits_round_trip(bits, count, seed):
    codes = torch.randint(0, 1 << bits, (count,), generator=torch.Generator().manual_seed(seed))
    packed = pack_bits(codes, bits)
    assert packed.dtype == torch.uint8 and packed.numel() == (count * bits + 7) // 8
    assert torch.equal(unpack_bits(packed, bits, count), codes.to(torch.uint8))
    start = count // 3  # a window that starts mid-byte for most widths
    assert torch.equal(unpack_bits(packed, bits, count - start, start=start), codes[start:].to(torch.uint8))


def test_pack_bits_rejects_out_of_range_codes():
    with pytest.raises(ValueError):
        pack_bits(torch.tensor([4]), 2)


def _random_mask(rows, cols, pattern, seed):
    scores = torch.rand(rows, cols, generator=torch.Generator().manual_seed(seed))
    return select_mask(scores, pattern)


@settings(max_examples=40, deadline=None)
@given(
    rows=st.integers(1, 9),
    groups=st.integers(1, 5),
    nm=st.sampled_from([(2, 4), (1, 4), (4, 8), (3, 8), (8, 16)]),
    seed=st.integers(0, 2**16),
)
def test_nm_layout_round_trips_and_costs_log2_m_bits_per_kept_weight(rows, groups, nm, seed):
    n, m = nm
    pattern = SparsityPattern.parse(f"{n}:{m}")
    mask = _random_mask(rows, groups * m, pattern, seed)
    layout = SparseLayout.encode(mask, "nm", pattern)
    assert torch.equal(layout.decode(), mask)
    index_bits = (m - 1).bit_length()
    assert layout.parts["indices"].numel() == (rows * groups * n * index_bits + 7) // 8


@settings(max_examples=40, deadline=None)
@given(
    rows=st.integers(1, 9),
    cols=st.integers(1, 50),
    sparsity=st.floats(0, 0.95),
    encoding=st.sampled_from(["bitmask", "csr"]),
    seed=st.integers(0, 2**16),
)
def test_unstructured_layouts_round_trip(rows, cols, sparsity, encoding, seed):
    mask = _random_mask(rows, cols, SparsityPattern.parse("unstructured", sparsity), seed)
    layout = SparseLayout.encode(mask, encoding)
    assert torch.equal(layout.decode(), mask)
    rebuilt = SparseLayout.from_parts(layout.parts, layout.metadata())
    assert torch.equal(rebuilt.decode(), mask)


def test_two_four_metadata_is_one_bit_per_weight():
    pattern = SparsityPattern.parse("2:4")
    mask = _random_mask(64, 256, pattern, 0)
    layout = SparseLayout.encode(mask, "nm", pattern)
    assert layout.parts["indices"].numel() * 8 == 64 * 256  # two 2-bit indices per 4 weights


def test_nm_encoding_rejects_a_mask_that_breaks_the_pattern():
    mask = torch.ones(2, 8, dtype=torch.bool)
    with pytest.raises(ValueError, match="exactly 2 of every 4"):
        SparseLayout.encode(mask, "nm", SparsityPattern.parse("2:4"))


def _save_load(qt, tmp_path):
    state, meta = qt.to_state_dict("layer")
    save_file(state, tmp_path / "w.safetensors")
    return read_quantized(load_file(tmp_path / "w.safetensors"), "layer", meta)


@pytest.mark.parametrize(
    "pattern,encoding",
    [("2:4", "nm"), ("4:8", "nm"), ("2:4", "bitmask"), ("unstructured", "bitmask"), ("unstructured", "csr")],
)
@pytest.mark.parametrize("value_dtype", ["float32", "float16"])
def test_sparse_tensor_round_trips_through_safetensors(make_weight, tmp_path, pattern, encoding, value_dtype):
    w = make_weight("heavy_tailed", 48, 128, seed=3)
    p = SparsityPattern.parse(pattern, None if ":" in pattern else 0.6)
    mask = select_mask(w.abs(), p)
    st_ = SparseTensor.from_dense(w, mask, p, encoding, value_dtype)
    expected = (w * mask).to(getattr(torch, value_dtype)).to(torch.float32)
    assert torch.equal(st_.dequantize(), expected)
    back = _save_load(st_, tmp_path)
    assert isinstance(back, SparseTensor) and torch.equal(back.dequantize(), expected)
    assert back.metadata()["pattern"] == p.name
    assert back.metadata()["sparsity"] == pytest.approx(p.sparsity, abs=1 / 128)


@pytest.mark.parametrize(
    "pattern,encoding", [("2:4", "nm"), ("unstructured", "bitmask"), ("unstructured", "csr")]
)
@pytest.mark.parametrize("bits", [3, 4])
def test_sparse_quant_tensor_round_trips_and_keeps_pruned_at_zero(
    make_weight, tmp_path, pattern, encoding, bits
):
    w = make_weight("gaussian", 32, 128, seed=5)
    p = SparsityPattern.parse(pattern, None if ":" in pattern else 0.5)
    mask = select_mask(w.abs(), p)
    codes, scales, zeros = group_rtn(w * mask, bits, 64, False, torch.float16)
    sq = SparseQuantTensor.from_codes(
        codes, scales, zeros, mask, bits=bits, group_size=64, symmetric=False, pattern=p, encoding=encoding
    )
    dense = sq.dequantize()
    assert (dense[~mask] == 0).all()
    g = torch.arange(128) // 64
    expected = (codes - zeros[g].t()) * scales.float()[g].t()
    assert torch.equal(dense, expected)
    assert torch.equal(_save_load(sq, tmp_path).dequantize(), dense)
    # Kept codes at `bits` bits each plus the mask encoding plus group metadata.
    kept_bytes = (int(mask.sum()) * bits + 7) // 8
    assert sq.qvalues.numel() == kept_bytes
    if encoding != "csr":  # CSR's 16-bit column indices only pay at high sparsity
        assert sq.nbytes < w.numel() * bits / 8  # cheaper than the same grid without sparsity


@settings(max_examples=30, deadline=None)
@given(
    pattern=st.sampled_from(["2:4", "4:8", "3:8", "unstructured"]),
    encoding=st.sampled_from(["nm", "bitmask", "csr"]),
    quantized=st.booleans(),
    rows=st.lists(st.integers(0, 31), min_size=1, max_size=5),
    seed=st.integers(0, 2**16),
)
def test_dequantize_rows_reads_only_those_rows_and_matches_full_dequantize(
    pattern, encoding, quantized, rows, seed
):
    if encoding == "nm" and pattern == "unstructured":
        encoding = "bitmask"
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(32, 64, generator=g)  # int3 zero points pack 32 rows to 3 words
    p = SparsityPattern.parse(pattern, None if ":" in pattern else 0.55)
    mask = select_mask(torch.rand(32, 64, generator=g), p)
    if quantized:
        codes, scales, zeros = group_rtn(w * mask, 3, 32, False, torch.float16)
        qt = SparseQuantTensor.from_codes(
            codes, scales, zeros, mask, bits=3, group_size=32, symmetric=False, pattern=p, encoding=encoding
        )
    else:
        qt = SparseTensor.from_dense(w, mask, p, encoding, "float32")
    ids = torch.tensor(rows).reshape(1, -1)
    assert torch.equal(qt.dequantize_rows(ids), qt.dequantize()[ids])
