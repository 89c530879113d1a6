"""A minimal decoder for the Llama and Gemma 3 text families, with a slotted KV cache.

Written in the style of gpt-fast: plain modules, a preallocated cache, nothing between the
caller and the matmuls. Every projection is an `nn.Linear` and the embedding an `nn.Embedding`
with the HF module names (`layers.3.self_attn.q_proj`, `lm_head`, ...), so the quantized
modules of `tierlm.kernels` can replace them by name after loading.

The cache holds `max_batch` independent slots. One forward call processes a batch of rows,
each row belonging to one slot at its own positions: a continuous-batching engine can mix
requests of different lengths in one decode step, and feed a long prompt in chunks.

A sliding-window layer needs only its last `window` positions, so its cache is a ring of
`window + max_chunk - 1` entries (position p lives at p mod ring) whenever that is shorter
than `max_seq_len`: the extra `max_chunk - 1` entries keep the keys the earliest query of
a chunk still needs from being overwritten by the chunk itself. For Gemma 3 this shrinks
five of every six layers' caches to about the window.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from tierlm.edge.config import ModelConfig
from tierlm.edge.fused_layers import LayerTail, fuse_tail
from tierlm.kernels.modules import FusedLinears, fuse_linears, linear_rows, rows_of

#: "all" positions, the "last" one, "none" (skip the output layer), or the last N positions.
LogitsMode = Literal["all", "last", "none"] | int


@dataclass(frozen=True)
class OutputSubset:
    """Some rows of the output layer, cut out once (:meth:`Transformer.output_subset`): a
    caller that reads the same few thousand tokens' logits at every step (a drafter's frequent
    vocabulary) reads only those rows, without the per-call gather that token ids cost."""

    token_ids: Tensor  # [V'] int64, ascending
    layer: nn.Module  # x -> logits of token_ids


class RMSNorm(nn.Module):
    """RMSNorm; with `unit_offset` the weight is stored as an offset from one (Gemma's `x*(1+w)`)."""

    def __init__(self, dim: int, eps: float, unit_offset: bool) -> None:
        super().__init__()
        self.eps = eps
        self.unit_offset = unit_offset
        self.weight = nn.Parameter(torch.zeros(dim) if unit_offset else torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        if x.dtype == torch.float32:
            # One fused kernel; in float32 both families' rounding points are the same.
            weight = 1.0 + self.weight if self.unit_offset else self.weight
            return F.rms_norm(x, (x.shape[-1],), weight.float(), self.eps)
        xf = x.float()
        normed = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        # The two families round at different points in low precision; match each one.
        if self.unit_offset:
            return (normed * (1.0 + self.weight.float())).type_as(x)
        return self.weight * normed.type_as(x)


class KVCache(nn.Module):
    """Keys and values of `max_batch` slots × `length` entries for one layer."""

    def __init__(
        self,
        max_batch: int,
        num_kv_heads: int,
        length: int,
        head_dim: int,
        dtype: torch.dtype,
        device: torch.device,
    ) -> None:
        super().__init__()
        shape = (max_batch, num_kv_heads, length, head_dim)
        self.register_buffer("k", torch.zeros(shape, dtype=dtype, device=device), persistent=False)
        self.register_buffer("v", torch.zeros(shape, dtype=dtype, device=device), persistent=False)

    def update(self, batch: BatchLayout, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """Write rows' new keys/values ([B, H, T, D]) at their entries; return the visible range."""
        rows = batch.slots[:, None]
        self.k[rows, :, batch.entries] = k.transpose(1, 2)
        self.v[rows, :, batch.entries] = v.transpose(1, 2)
        return self.k[batch.select, :, batch.key_start : batch.key_end], self.v[
            batch.select, :, batch.key_start : batch.key_end
        ]


@dataclass
class BatchLayout:
    """Where each row of a forward call lives in the cache, and which key positions it may see."""

    slots: Tensor  # [B] cache slot of each row
    entries: Tensor  # [B, T] cache entry each token is written to (its position, modulo a ring)
    select: slice | Tensor  # the rows' slots as a view (contiguous slots) or an index
    key_start: int  # the cache entries attention reads: [key_start, key_end)
    key_end: int
    mask: Tensor  # [B, 1, T, key_end - key_start], True where attention is allowed


#: torch.compile's stance for compiled decode steps: a step no graph fits runs op by op
#: instead of stalling for a compile. Tests set "fail_on_recompile" to prove none needs one.
SERVING_STANCE = "eager_on_recompile"

Ropes = dict[float, tuple[Tensor, Tensor]]  # rope theta -> (cos, sin) at the rows' positions
Layouts = dict[int | None, BatchLayout]  # sliding window (None: global) -> the rows' layout


class Attention(nn.Module):
    """Grouped-query attention with rope, optional q/k RMSNorm, reading and writing the cache."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        hd, bias = config.head_dim, config.attention_bias
        self.num_heads, self.num_kv_heads, self.head_dim = config.num_heads, config.num_kv_heads, hd
        self.scale = config.attention_scale
        self.q_proj = nn.Linear(config.hidden_size, config.num_heads * hd, bias=bias)
        self.k_proj = nn.Linear(config.hidden_size, config.num_kv_heads * hd, bias=bias)
        self.v_proj = nn.Linear(config.hidden_size, config.num_kv_heads * hd, bias=bias)
        self.o_proj = nn.Linear(config.num_heads * hd, config.hidden_size, bias=bias)
        if config.qk_norm:
            self.q_norm = RMSNorm(hd, config.norm_eps, config.norm_unit_offset)
            self.k_norm = RMSNorm(hd, config.norm_eps, config.norm_unit_offset)
        self.kv_cache: KVCache | None = None
        self.qkv: FusedLinears | None = None  # set by Transformer.fuse_projections

    def forward(self, x: Tensor, rope: tuple[Tensor, Tensor], batch: BatchLayout) -> Tensor:
        return self.o_proj(self.attend(x, rope, batch))

    def attend(
        self, x: Tensor, rope: tuple[Tensor, Tensor], batch: BatchLayout, qkv: tuple[Tensor, ...] | None = None
    ) -> Tensor:
        """The heads' outputs joined ``[B, T, heads * head_dim]``, before the output projection.
        ``qkv``: the projections of ``x`` when the previous layer's fused tail made them."""
        b, t, _ = x.shape
        if qkv is None:
            qkv = self.qkv(x) if self.qkv is not None else (self.q_proj(x), self.k_proj(x), self.v_proj(x))
        q, k, v = qkv
        q = q.reshape(b, t, self.num_heads, self.head_dim).transpose(1, 2)
        k = k.reshape(b, t, self.num_kv_heads, self.head_dim).transpose(1, 2)
        v = v.reshape(b, t, self.num_kv_heads, self.head_dim).transpose(1, 2)
        if hasattr(self, "q_norm"):
            q, k = self.q_norm(q), self.k_norm(k)
        cos, sin = rope
        q, k = _apply_rope(q, cos, sin), _apply_rope(k, cos, sin)
        keys, values = self.kv_cache.update(batch, k, v)
        if t == 1:
            y = _attend_one(q, keys, values, batch.mask, self.scale)
        else:
            y = F.scaled_dot_product_attention(
                q, keys, values, attn_mask=batch.mask, scale=self.scale, enable_gqa=self.num_heads != self.num_kv_heads
            )
        return y.transpose(1, 2).reshape(b, t, self.num_heads * self.head_dim)


class MLP(nn.Module):
    """Gated MLP: down(act(gate(x)) * up(x))."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        h, i, bias = config.hidden_size, config.intermediate_size, config.mlp_bias
        self.gate_proj = nn.Linear(h, i, bias=bias)
        self.up_proj = nn.Linear(h, i, bias=bias)
        self.down_proj = nn.Linear(i, h, bias=bias)
        self.gelu = config.activation == "gelu_tanh"
        self.gate_up: FusedLinears | None = None  # set by Transformer.fuse_projections

    def forward(self, x: Tensor) -> Tensor:
        gate, up = self.gate_up(x) if self.gate_up is not None else (self.gate_proj(x), self.up_proj(x))
        gate = F.gelu(gate, approximate="tanh") if self.gelu else F.silu(gate)
        return self.down_proj(gate * up)


class DecoderLayer(nn.Module):
    """Pre-norm residual block; Gemma adds post-norms around attention and MLP ("sandwich").

    The norm names follow each family's checkpoint: Llama's `post_attention_layernorm` is the
    norm *before* the MLP, Gemma's is the norm *after* attention (Gemma's pre-MLP norm is
    `pre_feedforward_layernorm`).
    """

    def __init__(self, config: ModelConfig, layer: int) -> None:
        super().__init__()
        norm = lambda: RMSNorm(config.hidden_size, config.norm_eps, config.norm_unit_offset)  # noqa: E731
        self.rope_theta = config.rope_theta[layer]
        self.sliding_window = config.sliding_window[layer]
        self.sandwich = config.sandwich_norm
        self.self_attn = Attention(config)
        self.mlp = MLP(config)
        self.input_layernorm = norm()
        self.post_attention_layernorm = norm()
        if self.sandwich:
            self.pre_feedforward_layernorm = norm()
            self.post_feedforward_layernorm = norm()
        self.tail: LayerTail | None = None  # set by Transformer.fuse_projections

    def forward(self, x: Tensor, rope: tuple[Tensor, Tensor], batch: BatchLayout) -> Tensor:
        if self.tail is not None:
            return self.step(x, None, rope, batch)[0]
        h = self.self_attn(self.input_layernorm(x), rope, batch)
        if self.sandwich:
            x = x + self.post_attention_layernorm(h)
            return x + self.post_feedforward_layernorm(self.mlp(self.pre_feedforward_layernorm(x)))
        x = x + h
        return x + self.mlp(self.post_attention_layernorm(x))

    def step(
        self, x: Tensor, qkv: tuple[Tensor, ...] | None, rope: tuple[Tensor, Tensor], batch: BatchLayout
    ) -> tuple[Tensor, tuple[Tensor, ...] | None]:
        """`forward` in a model whose layers may be fused (`Transformer.fuse_projections`):
        takes this layer's q/k/v when the previous layer's tail made them, and returns the next
        layer's with the output when this layer's tail makes them."""
        if self.tail is None:
            return self(x, rope, batch), None
        # Given q/k/v, attention does not read its input: the norm is skipped.
        normed = x if qkv is not None else self.input_layernorm(x)
        return self.tail(self.self_attn.attend(normed, rope, batch, qkv), x)


class Transformer(nn.Module):
    """The decoder. Call `setup_cache` once before `forward`."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(DecoderLayer(config, i) for i in range(config.num_layers))
        self.norm = RMSNorm(config.hidden_size, config.norm_eps, config.norm_unit_offset)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        if config.tie_word_embeddings:
            self.lm_head.weight = self.embed_tokens.weight
        self.max_batch = 0
        self.max_seq_len = 0
        self.max_chunk = 0
        self._rope: dict[float, tuple[Tensor, Tensor]] = {}
        self._rings: dict[int | None, int | None] = {}  # window -> ring length (None: linear cache)
        self._compiled_decode: Callable[..., Tensor] | None = None  # set by compile_decode

    def setup_cache(
        self, max_batch: int, max_seq_len: int, max_chunk: int | None = None, dtype: torch.dtype | None = None
    ) -> None:
        """Allocate the KV cache and rope tables.

        `max_batch` slots of `max_seq_len` positions; `max_chunk` is the most tokens a row
        may bring to one forward call (default `max_seq_len`), which sizes the rings of
        sliding-window layers.
        """
        if max_seq_len > self.config.max_position_embeddings:
            raise ValueError(
                f"max_seq_len {max_seq_len} exceeds the model's {self.config.max_position_embeddings} positions"
            )
        # The final norm's weight is always dense and in the model's dtype; the embedding may be
        # a quantized table with no float `weight` at all.
        dtype = dtype or self.norm.weight.dtype
        self.max_batch, self.max_seq_len = max_batch, max_seq_len
        self.max_chunk = min(max_chunk or max_seq_len, max_seq_len)
        c, device = self.config, self.device
        self._rings = {
            w: (w + self.max_chunk - 1 if w is not None and w + self.max_chunk - 1 < max_seq_len else None)
            for w in set(c.sliding_window)
        }
        for layer in self.layers:
            ring = self._rings[layer.sliding_window]
            # A spare entry past the ring: reading the whole ring is then still a strict part
            # of the buffer, laid out as before it wrapped, so a compiled decode graph's
            # guards on that view's strides hold at every position.
            length = ring + 1 if ring is not None else max_seq_len
            layer.self_attn.kv_cache = KVCache(max_batch, c.num_kv_heads, length, c.head_dim, dtype, device)
        self._rope = {
            theta: tuple(t.to(device) for t in _rope_table(theta, c.head_dim, max_seq_len, dtype))
            for theta in set(c.rope_theta)
        }

    @property
    def device(self) -> torch.device:
        # The final norm is always a dense parameter; a quantized embedding has no `weight`.
        return self.norm.weight.device

    def output_subset(self, token_ids: Tensor) -> OutputSubset:
        """The output layer's rows of `token_ids` (sorted, distinct), cut once for
        ``forward(..., vocab=subset)``; in the layer's own format where it allows
        (:func:`~tierlm.kernels.modules.rows_of`)."""
        ids = torch.unique(token_ids.to(torch.int64).cpu())
        if len(ids) == 0 or ids[0] < 0 or ids[-1] >= self.config.vocab_size:
            raise ValueError(f"an output subset needs token ids in 0..{self.config.vocab_size - 1}")
        ids = ids.to(self.device)
        return OutputSubset(ids, rows_of(self.lm_head, ids))

    def fuse_projections(self) -> int:
        """Run each layer's q/k/v and gate/up projections as one product each, where their
        weights can be joined (:func:`~tierlm.kernels.modules.fuse_linears`), and the rest of
        the layer after attention as one onnxruntime run where its products all run there
        (:func:`~tierlm.edge.fused_layers.fuse_tail`); returns how many groups of projections
        were joined. A decode step then makes four linear calls per layer instead of seven, or one.
        The modules keep their names and weights, so the model still saves as before."""
        fused = 0
        for layer in self.layers:
            attn, mlp = layer.self_attn, layer.mlp
            attn.qkv = fuse_linears([attn.q_proj, attn.k_proj, attn.v_proj])
            mlp.gate_up = fuse_linears([mlp.gate_proj, mlp.up_proj])
            fused += (attn.qkv is not None) + (mlp.gate_up is not None)
        for layer, following in zip(self.layers, [*self.layers[1:], None]):
            layer.tail = fuse_tail(layer, following)
        return fused

    def forward(
        self, tokens: Tensor, positions: Tensor, slots: Tensor, logits: LogitsMode = "all",
        vocab: Tensor | OutputSubset | None = None,
    ) -> Tensor | None:
        """Run rows of tokens through the model, writing their keys/values into the cache.

        tokens, positions: [B, T] (every row of one call has the same T); slots: [B], distinct;
        all on the model's device.
        A row must have written all positions before its first one in earlier calls.
        Returns logits [B, T, V] ("all"), [B, 1, V] ("last", the next-token prediction of each
        row), [B, N, V] (an int N: the last N positions) or None ("none": a prefill chunk whose predictions nobody reads skips the output layer).
        With `vocab` (token ids, or an `OutputSubset`), only those tokens' logits: V = the number of those tokens.
        """
        if tokens.shape[1] > self.max_chunk:
            raise ValueError(f"{tokens.shape[1]} tokens per row exceed max_chunk={self.max_chunk} of setup_cache()")
        x = self._blocks(self.embed(tokens), *self._tables(positions, slots))
        if logits == "none":
            return None
        if logits == "last":
            x = x[:, -1:]
        elif not isinstance(logits, str):
            x = x[:, -logits:]
        return self.head(x, vocab)

    # The three stages of `forward`, public so that a layer-by-layer pass (the compression
    # pipeline's calibration) runs exactly the arithmetic `forward` runs.

    def embed(self, tokens: Tensor) -> Tensor:
        """Input embeddings of `tokens` ([B, T] -> [B, T, hidden]), scaled as the family does."""
        x = self.embed_tokens(tokens)
        if self.config.embed_scale is not None:
            # HF rounds the scale to the weights' dtype before multiplying; so do we.
            x = x * torch.tensor(self.config.embed_scale, dtype=x.dtype)
        return x

    def layer_inputs(self, positions: Tensor, slots: Tensor) -> list[tuple[tuple[Tensor, Tensor], BatchLayout]]:
        """The (rope, layout) arguments of each decoder layer for rows at `positions` in `slots`."""
        ropes, layouts = self._tables(positions, slots)
        return [(ropes[layer.rope_theta], layouts[layer.sliding_window]) for layer in self.layers]

    def _tables(self, positions: Tensor, slots: Tensor, keys_from_zero: bool = False) -> tuple[Ropes, Layouts]:
        """The rope tables (by theta) and batch layouts (by window) the layers read."""
        if not self._rope:
            raise RuntimeError("call setup_cache() before forward()")
        ropes = {theta: (cos[positions].unsqueeze(1), sin[positions].unsqueeze(1)) for theta, (cos, sin) in self._rope.items()}
        layouts = {w: _layout(slots, positions, w, ring, keys_from_zero) for w, ring in self._rings.items()}
        return ropes, layouts

    def _blocks(self, x: Tensor, ropes: Ropes, layouts: Layouts) -> Tensor:
        qkv = None  # the next layer's q/k/v, when a fused tail made them
        for layer in self.layers:
            x, qkv = layer.step(x, qkv, ropes[layer.rope_theta], layouts[layer.sliding_window])
        return x

    def _decode_graph(self, x: Tensor, ropes: Ropes, layouts: Layouts) -> Tensor:
        return self.head(self._blocks(x, ropes, layouts))[:, 0]

    # ---- decode steps, optionally compiled ----

    def compile_decode(self) -> None:
        """Compile `decode`'s blocks and output layer with inductor, and build the graphs now.

        Run op by op, a decode step spends almost as long on its small ops (norms, rope,
        attention, the cache) as in its quantized matmuls (bench/edge_step.py); compiled, that
        work is fused into a few C++ kernels around the matmuls (onnxruntime's stay, as custom
        ops).
        Two graphs are built here, for one row and for two or more, each about a minute on two
        cores the first time (inductor keeps them on disk, under ``TORCHINDUCTOR_CACHE_DIR``,
        for the next start). Call after `setup_cache` and before any sequence is fed: the
        warm-up writes position 2 of slots 0 and 1.
        """
        if not self._rope:
            raise RuntimeError("call setup_cache() before compile_decode()")
        self._compiled_decode = torch.compile(self._decode_graph, dynamic=True)
        # Without duck shaping, sizes that happen to be equal in the warm-up (two layers' key
        # counts) stay separate symbols instead of a guard that they are always equal; position
        # 2 avoids the sizes 0 and 1, which torch specializes.
        with torch.fx.experimental._config.patch(use_duck_shape=False):
            for rows in range(1, min(2, self.max_batch) + 1):
                position = torch.full((rows, 1), 2, device=self.device)
                self._run_compiled(torch.zeros_like(position), position, torch.arange(rows, device=self.device))

    def decode(self, tokens: Tensor, positions: Tensor, slots: Tensor) -> Tensor:
        """Next-token logits [B, V] of rows bringing one token each (tokens, positions: [B, 1]).

        After `compile_decode`, rows in slots 0..B-1 (the engine hands out the lowest slots
        first, so its batches usually are) run a compiled graph. Another layout, or a shape
        no graph was built for, runs op by op rather than compiling again in the middle of
        serving.
        """
        if tokens.shape[1] != 1:
            raise ValueError(f"decode takes one token per row, got {tokens.shape[1]}")
        if self._compiled_decode is None or slots.tolist() != list(range(len(slots))):
            return self._decode_graph(self.embed(tokens), *self._tables(positions, slots))
        with torch.compiler.set_stance(SERVING_STANCE):
            return self._run_compiled(tokens, positions, slots)

    def _run_compiled(self, tokens: Tensor, positions: Tensor, slots: Tensor) -> Tensor:
        # The graphs guard on their inputs being inference tensors, as in the warm-up: the
        # caller's own tensors reach them only as copies made here.
        with torch.inference_mode():
            positions, slots = positions.clone(), slots.clone()
            # Reading each layer's keys from entry 0 (masked as before) keeps a sliding window's
            # start out of the graph's guards: one graph serves every position.
            tables = self._tables(positions, slots, keys_from_zero=True)
            return self._compiled_decode(self.embed(tokens), *tables)

    def head(self, x: Tensor, vocab: Tensor | OutputSubset | None = None) -> Tensor:
        """Logits of the last layer's hidden states: final norm, output layer, soft-capping.

        With `vocab`, the logits of those token ids only, from those rows of the output layer:
        a request that reads a few tokens' scores (label choices) skips the rest of a 262k-row
        product; an :class:`OutputSubset` brings those rows already cut.
        """
        if vocab is None:
            out = self.lm_head(self.norm(x))
        elif isinstance(vocab, OutputSubset):
            out = vocab.layer(self.norm(x))
        else:
            out = linear_rows(self.lm_head, self.norm(x), vocab)
        cap = self.config.final_logit_softcapping
        if cap is not None:
            out = torch.tanh(out / cap) * cap
        return out


class CausalLM(nn.Module):
    """`lm(input_ids) -> logits [B, T, V]` over a `Transformer`, for whole-sequence scorers.

    Perplexity evaluation feeds independent windows; each call starts at position 0 in slots
    0..B-1, so the cache only needs to be as large as the largest call (grown on demand).
    `logits_to_keep` (HF's spelling) skips the output layer for positions nobody scores.
    """

    def __init__(self, model: Transformer) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: Tensor, logits_to_keep: int = 0) -> Tensor:
        b, t = input_ids.shape
        if b > self.model.max_batch or t > self.model.max_seq_len:
            self.model.setup_cache(max(b, self.model.max_batch), max(t, self.model.max_seq_len))
        device = self.model.device
        positions = torch.arange(t, device=device).expand(b, t)
        out = self.model(input_ids.to(device), positions, torch.arange(b, device=device), logits=logits_to_keep or "all")
        assert out is not None
        return out


def _layout(
    slots: Tensor, positions: Tensor, window: int | None, ring: int | None, keys_from_zero: bool = False
) -> BatchLayout:
    """Cache entries, key range and mask for rows at `positions`: causal, within `window` if set.

    Until a ring wraps, entry = position and the key range starts where the oldest query's
    window starts (or at 0 with `keys_from_zero`: at most a ring's keys, the mask unchanged),
    so a sliding-window layer attends over at most window + T - 1 keys. Once
    positions pass the ring's length, all its entries are read and each row's mask recovers
    which position an entry holds: the latest one at or before the row's last position that
    is congruent to the entry modulo the ring.
    """
    ids = slots.tolist()
    contiguous = ids == list(range(ids[0], ids[0] + len(ids)))
    select: slice | Tensor = slice(ids[0], ids[0] + len(ids)) if contiguous else slots
    key_end = int(positions.max()) + 1
    q = positions[..., None]  # [B, T, 1]
    if ring is None or key_end <= ring:
        key_start = 0 if window is None or keys_from_zero else max(0, int(positions.min()) - window + 1)
        keys = torch.arange(key_start, key_end, device=positions.device)
        mask = keys <= q
        # A ring's entries are a tensor of their own even before it wraps, as after: a compiled
        # graph guards on which layouts share their entries.
        entries = positions if ring is None else positions % ring
    else:
        key_start, key_end = 0, ring
        last = positions[:, -1:]  # [B, 1]: positions ascend along a row
        held = last - (last - torch.arange(ring, device=positions.device)) % ring  # [B, ring]
        keys = held[:, None, :]
        mask = (keys >= 0) & (keys <= q)
        entries = positions % ring
    if window is not None:
        mask &= q - keys < window
    return BatchLayout(slots, entries, select, key_start, key_end, mask.unsqueeze(1))


def _rope_table(theta: float, dim: int, length: int, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    # Same arithmetic as HF's default rope (float32, non-interleaved halves).
    inv_freq = 1.0 / (theta ** (torch.arange(0, dim, 2, dtype=torch.int64).float() / dim))
    freqs = torch.outer(torch.arange(length, dtype=torch.float32), inv_freq)
    emb = torch.cat((freqs, freqs), dim=-1)
    return emb.cos().to(dtype), emb.sin().to(dtype)


def _attend_one(q: Tensor, keys: Tensor, values: Tensor, mask: Tensor, scale: float) -> Tensor:
    """Attention of one query per row ([B, H, 1, D]) over [B, KVH, S, D] keys and values.

    The decode step's case. Written as two small products: torch's fused CPU attention splits
    its work for long queries, and for a single one that costs several times the arithmetic
    (and, on a busy 2-core machine, waits on the other thread); query heads sharing a key/value
    head are stacked as the rows of one product (grouped-query attention without a copy).
    """
    b, h, _, d = q.shape
    kv_heads = keys.shape[1]
    scores = torch.matmul(q.reshape(b, kv_heads, h // kv_heads, d), keys.transpose(-1, -2)) * scale
    scores = scores.float().masked_fill(~mask, float("-inf"))  # mask [B, 1, 1, S] broadcasts
    weights = torch.softmax(scores, dim=-1).to(values.dtype)
    return torch.matmul(weights, values).reshape(b, h, 1, d)


def _apply_rope(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    half = x.shape[-1] // 2
    rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
    return x * cos + rotated * sin


def load_model(path: str | Path, dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu") -> Transformer:
    """Load any model folder we serve into a `Transformer` (no cache yet): an HF folder
    (config.json + *.safetensors), a compressed artifact (`tierlm compress`, with its quantized
    modules in place and their fast kernels on) or its compressed-tensors export for vLLM
    (`tierlm export vllm`, on the same kernels).

    The kernels read the two compressed formats without knowing the architecture; this function
    builds the architecture and sets their modules in place.
    """
    from safetensors.torch import load_file

    from tierlm.kernels.artifact import is_artifact, read_artifact
    from tierlm.kernels.vllm_export import is_exported, read_exported

    path = Path(path)
    compressed = is_artifact(path) or is_exported(path)
    if compressed and torch.device(device).type != "cpu":
        raise ValueError("compressed models load on the CPU; their GPU kernels are used per module")
    config = ModelConfig.from_dir(path)
    if is_artifact(path):
        parts = read_artifact(path)
        modules, dense = parts.modules, parts.dense
    elif is_exported(path):
        exported = read_exported(path)
        modules = {hf_to_our_name(name): module for name, module in exported.modules.items()}
        dense = {hf_to_our_name(name): tensor for name, tensor in exported.dense.items()}
    else:
        files = sorted(path.glob("*.safetensors"))
        if not files:
            raise FileNotFoundError(f"no *.safetensors in {path}")
        modules, dense = {}, {}
        for file in files:
            dense.update({hf_to_our_name(name): tensor for name, tensor in load_file(file).items()})
    model = _assemble(config, modules, {k: v.to(dtype) for k, v in dense.items()}, path)
    return model.to(device).eval() if not compressed else model.eval()


def _assemble(config: ModelConfig, modules: dict[str, nn.Module], dense: dict[str, Tensor], source: Path) -> Transformer:
    """Our decoder with ``modules`` (compressed, by module name) set in place and ``dense`` loaded.

    A tied output layer shares the embedding: as the compressed table's ``tied_output()`` when
    the table is compressed, else as the same dense parameter.
    """
    from tierlm.kernels.decoder import set_module

    if config.tie_word_embeddings:
        dense.pop("lm_head.weight", None)
    with torch.device("meta"):
        model = Transformer(config)
    for name, module in modules.items():
        set_module(model, name, module)
    tied_table = config.tie_word_embeddings and "embed_tokens" in modules
    if tied_table:
        model.lm_head = model.embed_tokens.tied_output()
    missing, unexpected = model.load_state_dict(dense, strict=False, assign=True)
    expected = {"lm_head.weight"} if config.tie_word_embeddings else set()
    missing = [k for k in missing if k not in expected and not any(k.startswith(n + ".") for n in modules)]
    if missing or unexpected:
        raise ValueError(f"{source}: checkpoint does not match the architecture: missing {missing}, unexpected {unexpected}")
    if config.tie_word_embeddings and not tied_table:
        model.lm_head.weight = model.embed_tokens.weight  # assign=True replaced the parameter: tie again
    return model


def hf_to_our_name(hf_name: str) -> str:
    """Our module name for an HF checkpoint's tensor or module name (the decoder prefix dropped)."""
    for prefix in ("model.language_model.", "language_model.model.", "model."):
        if hf_name.startswith(prefix):
            return hf_name[len(prefix) :]
    return hf_name
