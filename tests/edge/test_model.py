"""The decoder reproduces transformers' own forward pass, through every cache path."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from tierlm.edge.config import ModelConfig
from tierlm.edge.decoder import Transformer, load_model

SEQ = 40  # well past the tiny Gemma's sliding window of 6


@pytest.fixture(scope="module")
def pair(model_dir):
    from transformers import AutoModelForCausalLM

    hf = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    return hf, load_model(model_dir)


def _tokens(seed: int, vocab: int, n: int = SEQ) -> torch.Tensor:
    return torch.randint(3, vocab, (1, n), generator=torch.Generator().manual_seed(seed))


@torch.inference_mode()
def test_logits_match_transformers(pair):
    hf, ours = pair
    ours.setup_cache(max_batch=4, max_seq_len=64)  # one 40-token chunk: linear caches only
    ids = _tokens(0, ours.config.vocab_size)
    expected = hf(ids).logits
    got = ours(ids, torch.arange(SEQ)[None], torch.tensor([2]))
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)


def _ring_cache(ours: Transformer, max_batch: int = 4) -> None:
    """Chunks of at most 8 tokens: the tiny Gemma's window-6 layers get 13-entry rings."""
    ours.setup_cache(max_batch=max_batch, max_seq_len=64, max_chunk=8)
    for layer in ours.layers:
        expected = 6 + 8 - 1 + 1 if layer.sliding_window else 64  # the ring and its spare entry
        assert layer.self_attn.kv_cache.k.shape[2] == expected


@torch.inference_mode()
def test_chunked_prefill_and_decode_match_one_shot(pair):
    hf, ours = pair
    _ring_cache(ours)
    ids = _tokens(1, ours.config.vocab_size)
    with pytest.raises(ValueError, match="max_chunk"):
        ours(ids[:, :9], torch.arange(9)[None], torch.tensor([3]))
    expected = hf(ids).logits[0]
    rows = []
    for start in range(0, 30, 7):  # chunks of 7 prompt tokens, logits of each chunk
        end = min(start + 7, 30)
        rows.append(ours(ids[:, start:end], torch.arange(start, end)[None], torch.tensor([3]))[0])
    for pos in range(30, SEQ):  # then one token at a time, as decoding does
        rows.append(ours(ids[:, pos : pos + 1], torch.tensor([[pos]]), torch.tensor([3]))[0])
    torch.testing.assert_close(torch.cat(rows), expected, atol=1e-4, rtol=1e-4)


@torch.inference_mode()
def test_batched_rows_at_different_positions(pair):
    """Rows of one decode step live in non-adjacent slots at different lengths."""
    hf, ours = pair
    _ring_cache(ours)
    lengths = {0: 25, 2: 9, 3: 33}  # slot -> tokens already in the cache (rings wrapped or not)
    seqs = {slot: _tokens(10 + slot, ours.config.vocab_size, n + 1) for slot, n in lengths.items()}
    for slot, n in lengths.items():
        for start in range(0, n, 8):
            end = min(start + 8, n)
            ours(seqs[slot][:, start:end], torch.arange(start, end)[None], torch.tensor([slot]), logits="none")
    slots = list(lengths)
    tokens = torch.cat([seqs[s][:, -1:] for s in slots])
    positions = torch.tensor([[lengths[s]] for s in slots])
    got = ours(tokens, positions, torch.tensor(slots), logits="last")[:, 0]
    for row, slot in enumerate(slots):
        torch.testing.assert_close(got[row], hf(seqs[slot]).logits[0, -1], atol=1e-4, rtol=1e-4)


@torch.inference_mode()
def test_sliding_window_is_applied(gemma_dir):
    """Without the window the same weights give different logits past it: the mask matters."""
    from transformers import AutoModelForCausalLM

    hf = AutoModelForCausalLM.from_pretrained(gemma_dir, dtype=torch.float32).eval()
    windowed = load_model(gemma_dir)
    config = dataclasses.replace(windowed.config, sliding_window=(None,) * windowed.config.num_layers)
    unwindowed = Transformer(config)
    unwindowed.load_state_dict(windowed.state_dict())
    ids = _tokens(5, config.vocab_size)
    expected = hf(ids).logits
    for model in (windowed, unwindowed):
        model.setup_cache(1, 64)
    args = (ids, torch.arange(SEQ)[None], torch.tensor([0]))
    torch.testing.assert_close(windowed(*args), expected, atol=1e-4, rtol=1e-4)
    assert not torch.allclose(unwindowed(*args)[:, 10:], expected[:, 10:], atol=1e-2)


def test_config_reads_transformers4_gemma3_spelling():
    """The real Gemma 3 270M config.json as transformers 4 wrote it."""
    hf = {
        "model_type": "gemma3_text",
        "vocab_size": 262144,
        "hidden_size": 640,
        "intermediate_size": 2048,
        "num_hidden_layers": 18,
        "num_attention_heads": 4,
        "num_key_value_heads": 1,
        "head_dim": 256,
        "hidden_activation": "gelu_pytorch_tanh",
        "max_position_embeddings": 32768,
        "rms_norm_eps": 1e-6,
        "rope_theta": 1000000.0,
        "rope_local_base_freq": 10000.0,
        "rope_scaling": None,
        "query_pre_attn_scalar": 256,
        "sliding_window": 512,
        "sliding_window_pattern": 6,
        "eos_token_id": [1, 106],
    }
    config = ModelConfig.from_hf(hf)
    full = [i for i, w in enumerate(config.sliding_window) if w is None]
    assert full == [5, 11, 17]
    assert {config.sliding_window[i] for i in range(18) if i not in full} == {512}
    assert [config.rope_theta[i] for i in full] == [1e6] * 3 and config.rope_theta[0] == 1e4
    assert config.attention_scale == 256**-0.5 and config.embed_scale == 640**0.5
    assert config.tie_word_embeddings and config.eos_token_ids == (1, 106)


def test_config_rejects_what_it_cannot_run():
    with pytest.raises(ValueError, match="model_type"):
        ModelConfig.from_hf({"model_type": "gpt2"})
    llama = {
        "model_type": "llama",
        "vocab_size": 8,
        "hidden_size": 8,
        "intermediate_size": 8,
        "num_hidden_layers": 1,
        "num_attention_heads": 2,
        "rope_scaling": {"rope_type": "yarn", "factor": 4.0},
    }
    with pytest.raises(ValueError, match="rope type"):
        ModelConfig.from_hf(llama)


@torch.inference_mode()
def test_fused_projections_and_output_rows_match_the_plain_model(model_dir):
    plain, fused = load_model(model_dir), load_model(model_dir)
    assert fused.fuse_projections() == 2 * len(fused.layers)  # q/k/v and gate/up in every layer
    ids = _tokens(2, plain.config.vocab_size, n=12)
    rows = torch.tensor([7, 3, plain.config.vocab_size - 1])
    for model in (plain, fused):
        model.setup_cache(max_batch=2, max_seq_len=32, max_chunk=9)
    slot = torch.tensor([1])
    # A 9-token prefill, then decode steps (one query each: the single-query attention path).
    want = plain(ids[:, :9], torch.arange(9)[None], slot)
    torch.testing.assert_close(fused(ids[:, :9], torch.arange(9)[None], slot), want, atol=1e-5, rtol=1e-5)
    for pos in range(9, 12):
        step = (ids[:, pos : pos + 1], torch.tensor([[pos]]), slot)
        want = plain(*step)
        got = fused(*step, vocab=rows)  # only those tokens' logits, from those output rows
        torch.testing.assert_close(got, want[..., rows], atol=1e-5, rtol=1e-5)


@torch.inference_mode()
def test_an_output_subset_cut_once_gives_those_tokens_logits(model_dir):
    model = load_model(model_dir)
    model.setup_cache(max_batch=1, max_seq_len=16)
    vocab = model.config.vocab_size
    subset = model.output_subset(torch.tensor([vocab - 1, 4, 9, 4]))  # unsorted, repeated
    assert subset.token_ids.tolist() == [4, 9, vocab - 1]
    ids = _tokens(1, vocab, n=6)
    want = model(ids, torch.arange(6)[None], torch.tensor([0]))
    got = model(ids, torch.arange(6)[None], torch.tensor([0]), vocab=subset)  # softcapping included (Gemma)
    torch.testing.assert_close(got, want[..., subset.token_ids], atol=1e-5, rtol=1e-5)
    for bad in (torch.tensor([vocab]), torch.tensor([-1, 2]), torch.tensor([], dtype=torch.int64)):
        with pytest.raises(ValueError, match="token ids in 0.."):
            model.output_subset(bad)
