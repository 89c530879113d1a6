"""Bit packing: exact round trips (property-based) and the documented GPTQ bit layout."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from tierlm.kernels.packing import (
    int4_words_to_bytes,
    pack_int3,
    pack_int4,
    unpack_int3,
    unpack_int4,
)


def _codes(bits: int, multiple: int):
    return st.tuples(
        st.integers(1, 4).map(lambda m: m * multiple),
        st.integers(1, 5),
        st.integers(0, 1),
        st.integers(0, 2**31 - 1),
    ).map(
        lambda a: (
            torch.randint(0, 1 << bits, (a[0], a[1]), generator=torch.Generator().manual_seed(a[3])),
            a[2],
        )
    )


@settings(max_examples=40, deadline=None)
@given(_codes(4, 8))
def test_int4_round_trip(case):
    codes, dim = case
    codes = codes if dim == 0 else codes.t().contiguous()
    packed = pack_int4(codes, dim)
    assert packed.dtype == torch.int32 and packed.shape[dim] == codes.shape[dim] // 8
    assert torch.equal(unpack_int4(packed, dim).to(torch.int64), codes)


@settings(max_examples=40, deadline=None)
@given(_codes(3, 32))
def test_int3_round_trip(case):
    codes, dim = case
    codes = codes if dim == 0 else codes.t().contiguous()
    packed = pack_int3(codes, dim)
    assert packed.shape[dim] == codes.shape[dim] * 3 // 32
    assert torch.equal(unpack_int3(packed, dim).to(torch.int64), codes)


def test_int4_layout_is_sequential_low_nibble_first():
    word = pack_int4(torch.arange(8).reshape(8, 1))
    assert int(word) & 0xFFFFFFFF == 0x76543210


def test_int3_layout_is_a_little_endian_bit_stream():
    codes = torch.randint(0, 8, (32,), generator=torch.Generator().manual_seed(3))
    stream = sum(int(c) << (3 * i) for i, c in enumerate(codes))
    words = [int(w) & 0xFFFFFFFF for w in pack_int3(codes.reshape(32, 1), 0).flatten()]
    assert words == [(stream >> (32 * j)) & 0xFFFFFFFF for j in range(3)]


def test_int4_words_read_as_bytes_give_nibble_pairs():
    codes = torch.randint(0, 16, (64, 3))  # [K, N]
    as_bytes = int4_words_to_bytes(pack_int4(codes, 0))  # [N, K/2]
    assert torch.equal((as_bytes & 0xF).to(torch.int64), codes[0::2].t())
    assert torch.equal((as_bytes >> 4).to(torch.int64), codes[1::2].t())


@pytest.mark.parametrize("fn,bad", [(pack_int4, 16), (pack_int3, 8), (pack_int4, -1)])
def test_out_of_range_codes_are_rejected(fn, bad):
    codes = torch.zeros(32, 1, dtype=torch.int64)
    codes[5] = bad
    with pytest.raises(ValueError):
        fn(codes, 0)


def test_length_must_fill_whole_words():
    with pytest.raises(ValueError):
        pack_int4(torch.zeros(12, 1, dtype=torch.int64), 0)
    with pytest.raises(ValueError):
        pack_int3(torch.zeros(40, 1, dtype=torch.int64), 0)
