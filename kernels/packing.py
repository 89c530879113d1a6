"""Bit packing of small unsigned integer codes into int32 words, in the GPTQ checkpoint layout.

Layout (the one AutoGPTQ / vLLM's ``gptq`` loader use, *not* AWQ's interleaved order):

- **int4**: 8 codes per int32 word, packed along ``dim`` (for a GPTQ ``qweight`` that is the
  input dimension of ``Wᵀ``). Code ``i`` of a word sits in bits ``4i .. 4i+3``, so the order is
  sequential (0,1,...,7), least significant nibble first. AWQ's layout differs: it packs along the
  output dimension in the order (0,2,4,6,1,3,5,7).
- **int3**: 32 codes per three int32 words, as one little-endian 96-bit stream: code ``i`` sits in
  stream bits ``3i .. 3i+2`` (codes 10 and 21 straddle word boundaries), as AutoGPTQ packs 3 bits.

Because int4 words are little-endian, the bytes of a word read low nibble first: a ``[K/8, N]``
int4 ``qweight`` transposed to ``[N, K/8]`` and viewed as uint8 is ``[N, K/2]`` with element
``2j`` in the low nibble of byte ``j`` -- exactly onnxruntime's ``MatMulNBits`` B layout
(see :func:`int4_words_to_bytes`).
"""

from __future__ import annotations

import torch

_INT4_PER_WORD = 8
_INT3_PER_3WORDS = 32


def _move_last(t: torch.Tensor, dim: int) -> torch.Tensor:
    return t.movedim(dim, -1)


def _check_codes(codes: torch.Tensor, bits: int) -> None:
    if codes.is_floating_point() or codes.dtype == torch.bool:
        raise TypeError(f"codes must be an integer tensor, got {codes.dtype}")
    if codes.numel() and (int(codes.min()) < 0 or int(codes.max()) >= 1 << bits):
        raise ValueError(f"codes must lie in [0, {(1 << bits) - 1}] for {bits}-bit packing")


def pack_int4(codes: torch.Tensor, dim: int = 0) -> torch.Tensor:
    """Pack 4-bit codes (values 0..15) into int32 words, 8 per word along ``dim``.

    ``codes.shape[dim]`` must be a multiple of 8; the result has that dimension divided by 8.
    """
    _check_codes(codes, 4)
    c = _move_last(codes, dim)
    if c.shape[-1] % _INT4_PER_WORD:
        raise ValueError(f"int4 packing needs a multiple of 8 along dim {dim}, got {c.shape[-1]}")
    c = c.reshape(*c.shape[:-1], -1, _INT4_PER_WORD)
    words = torch.zeros(c.shape[:-1], dtype=torch.int32, device=c.device)
    for i in range(_INT4_PER_WORD):
        # int32 shifts wrap, so nibble 7 lands in the sign bit as intended.
        words |= c[..., i].to(torch.int32) << (4 * i)
    return words.movedim(-1, dim).contiguous()


def unpack_int4(words: torch.Tensor, dim: int = 0) -> torch.Tensor:
    """Inverse of :func:`pack_int4`: int32 words to uint8 codes, 8 per word along ``dim``."""
    # Read as little-endian bytes (as int4_words_to_bytes does), byte j holds codes 2j (low
    # nibble) and 2j+1: a handful of ops whatever the size, where a shift per code position made
    # a one-row lookup (an int4 embedding's, once per decoded token) cost ~0.4 ms.
    w = _move_last(words, dim).contiguous()
    nibbles = w.view(torch.uint8)
    codes = torch.stack((nibbles & 0xF, nibbles >> 4), dim=-1)
    return codes.reshape(*w.shape[:-1], -1).movedim(-1, dim).contiguous()


def _int3_positions() -> list[tuple[int, int]]:
    """(word index, bit offset) of each of the 32 codes in a 96-bit group."""
    return [(3 * i // 32, 3 * i % 32) for i in range(_INT3_PER_3WORDS)]


def pack_int3(codes: torch.Tensor, dim: int = 0) -> torch.Tensor:
    """Pack 3-bit codes (values 0..7) as a 96-bit little-endian stream per 32 codes along ``dim``.

    ``codes.shape[dim]`` must be a multiple of 32; the result has ``3 * shape[dim] / 32`` int32
    words along that dimension.
    """
    _check_codes(codes, 3)
    c = _move_last(codes, dim)
    if c.shape[-1] % _INT3_PER_3WORDS:
        raise ValueError(f"int3 packing needs a multiple of 32 along dim {dim}, got {c.shape[-1]}")
    c = c.reshape(*c.shape[:-1], -1, _INT3_PER_3WORDS)
    words = torch.zeros(*c.shape[:-1], 3, dtype=torch.int32, device=c.device)
    for i, (word, off) in enumerate(_int3_positions()):
        code = c[..., i].to(torch.int32)
        words[..., word] |= code << off  # bits past 31 wrap away ...
        if off > 29:
            words[..., word + 1] |= code >> (32 - off)  # ... and continue in the next word
    return words.reshape(*c.shape[:-2], -1).movedim(-1, dim).contiguous()


def unpack_int3(words: torch.Tensor, dim: int = 0) -> torch.Tensor:
    """Inverse of :func:`pack_int3`: int32 words to uint8 codes along ``dim``."""
    w = _move_last(words, dim)
    if w.shape[-1] % 3:
        raise ValueError("int3 words come in triples")
    w = w.reshape(*w.shape[:-1], -1, 3)
    codes = torch.empty(*w.shape[:-1], _INT3_PER_3WORDS, dtype=torch.uint8, device=w.device)
    for i, (word, off) in enumerate(_int3_positions()):
        code = (w[..., word] >> off) & 0x7
        if off > 29:
            low_bits = 32 - off
            code = (code & ((1 << low_bits) - 1)) | ((w[..., word + 1] << low_bits) & 0x7)
        codes[..., i] = code
    return codes.reshape(*w.shape[:-2], -1).movedim(-1, dim).contiguous()


def int4_words_to_bytes(qweight: torch.Tensor) -> torch.Tensor:
    """GPTQ ``qweight`` ``[K/8, N]`` int32 to ``[N, K/2]`` uint8, low nibble = even input index.

    This is a transpose plus a reinterpretation of the same bits (little-endian words), which is
    the byte layout onnxruntime's ``MatMulNBits`` expects for its B input.
    """
    return qweight.t().contiguous().view(torch.uint8)


def pack_bits(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """Pack a flat stream of ``bits``-bit codes (1..8) into uint8, little-endian bit order.

    Code ``i`` occupies stream bits ``bits·i .. bits·i + bits - 1``; byte ``j`` holds stream bits
    ``8j .. 8j+7`` (bit 0 = least significant). Any width packs densely (3-bit codes straddle
    bytes), so N:M index metadata costs exactly ``ceil(log2 M)`` bits per kept weight. The
    output has ``ceil(codes.numel() · bits / 8)`` bytes; the input is flattened.
    """
    if not 1 <= bits <= 8:
        raise ValueError(f"bits must be in 1..8, got {bits}")
    _check_codes(codes, bits)
    flat = codes.reshape(-1).to(torch.uint8)
    shifts = torch.arange(bits, dtype=torch.uint8, device=flat.device)
    stream = ((flat.unsqueeze(1) >> shifts) & 1).reshape(-1)
    stream = torch.nn.functional.pad(stream, (0, -stream.numel() % 8))
    weights = (1 << torch.arange(8, dtype=torch.int32, device=flat.device)).to(torch.uint8)
    return (stream.reshape(-1, 8) * weights).sum(1, dtype=torch.int32).to(torch.uint8)


def unpack_bits(packed: torch.Tensor, bits: int, count: int, start: int = 0) -> torch.Tensor:
    """Inverse of :func:`pack_bits`: codes ``start .. start+count-1`` as a flat uint8 tensor.

    Only the bytes holding those codes are expanded, so reading one row of a large packed
    matrix costs that row, not the matrix.
    """
    if not 1 <= bits <= 8:
        raise ValueError(f"bits must be in 1..8, got {bits}")
    if packed.numel() * 8 < (start + count) * bits:
        raise ValueError(f"{packed.numel()} bytes cannot hold codes up to {start + count} of {bits} bits")
    first_bit = start * bits
    window = packed.reshape(-1)[first_bit // 8 : ((start + count) * bits + 7) // 8]
    shifts = torch.arange(8, dtype=torch.uint8, device=packed.device)
    skip = first_bit % 8
    stream = ((window.reshape(-1, 1) >> shifts) & 1).reshape(-1)[skip : skip + count * bits]
    weights = (1 << torch.arange(bits, dtype=torch.int32, device=packed.device)).to(torch.uint8)
    return (stream.reshape(count, bits) * weights).sum(1, dtype=torch.int32).to(torch.uint8)
