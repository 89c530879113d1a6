"""Compiled decode steps (`Transformer.compile_decode`): the same logits as transformers, from
two graphs built up front, whatever the positions, ring wrap-arounds and batch sizes."""

from __future__ import annotations

import asyncio

import pytest
import torch

from tierlm.edge import DecoderEngine, GenerationRequest
from tierlm.edge import decoder as decoder_module
from tierlm.edge.decoder import load_model

MAX_SEQ = 64


@pytest.fixture(scope="module")
def compiled(gemma_dir):
    """The tiny Gemma (five window-6 layers with 14-entry rings, a global one), compiled."""
    model = load_model(gemma_dir)
    model.setup_cache(max_batch=4, max_seq_len=MAX_SEQ, max_chunk=8)
    model.compile_decode()
    return model


@pytest.fixture(scope="module")
def hf_model(gemma_dir):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(gemma_dir, dtype=torch.float32).eval()


def _prefill(model, slot: int, ids: torch.Tensor) -> None:
    for start in range(0, ids.shape[1], 8):
        end = min(start + 8, ids.shape[1])
        model(ids[:, start:end], torch.arange(start, end)[None], torch.tensor([slot]), logits="none")


@torch.inference_mode()
def test_compiled_steps_match_transformers_without_compiling_again(compiled, hf_model, monkeypatch):
    monkeypatch.setattr(decoder_module, "SERVING_STANCE", "fail_on_recompile")  # a step without a graph raises
    vocab = compiled.config.vocab_size
    prompts = {0: 5, 1: 11, 2: 3, 3: 17}  # slot -> prompt length
    seqs = {
        slot: torch.randint(3, vocab, (1, n + 30), generator=torch.Generator().manual_seed(slot)) for slot, n in prompts.items()
    }
    for slot, n in prompts.items():
        _prefill(compiled, slot, seqs[slot][:, :n])
    expected = {slot: hf_model(ids).logits[0] for slot, ids in seqs.items()}
    pos = dict(prompts)
    # Batches of 1 to 4 rows in slots 0..B-1, until every ring has wrapped (positions past 14).
    for step in range(30):
        rows = [0, 1, 2, 3][: 1 + step % 4]
        tokens = torch.cat([seqs[s][:, pos[s] : pos[s] + 1] for s in rows])
        positions = torch.tensor([[pos[s]] for s in rows])
        got = compiled.decode(tokens, positions, torch.tensor(rows))
        for row, slot in enumerate(rows):
            torch.testing.assert_close(got[row], expected[slot][pos[slot]], atol=1e-4, rtol=1e-4)
            pos[slot] += 1
    assert min(pos.values()) > 14


@torch.inference_mode()
def test_rows_outside_slots_0_to_b_run_op_by_op_with_the_same_logits(compiled, hf_model):
    ids = torch.randint(3, compiled.config.vocab_size, (1, 21), generator=torch.Generator().manual_seed(7))
    _prefill(compiled, 2, ids[:, :20])
    got = compiled.decode(ids[:, 20:21], torch.tensor([[20]]), torch.tensor([2]))
    torch.testing.assert_close(got[0], hf_model(ids).logits[0, 20], atol=1e-4, rtol=1e-4)


def test_tensors_made_outside_inference_mode_use_the_graphs_too(compiled, monkeypatch):
    monkeypatch.setattr(decoder_module, "SERVING_STANCE", "fail_on_recompile")
    for rows in (1, 3):
        logits = compiled.decode(torch.full((rows, 1), 4), torch.full((rows, 1), 9), torch.arange(rows))
        assert logits.shape == (rows, compiled.config.vocab_size)


def test_decode_takes_one_token_per_row(compiled):
    with pytest.raises(ValueError, match="one token per row"):
        compiled.decode(torch.zeros(1, 2, dtype=torch.int64), torch.tensor([[3, 4]]), torch.tensor([0]))


def test_a_compiled_engine_generates_what_an_eager_one_does(llama_dir):
    """The engine's own batches (rows joining and leaving) through a compiled model; the tiny
    Llama's two layers compile in a fraction of the Gemma's time."""
    prompts = ["The market rose today", "Gold prices fell sharply after", "Oil", "Traders waited for new data while"]

    async def generate(engine: DecoderEngine) -> list[list[int]]:
        requests = [GenerationRequest(prompt=p, max_tokens=24) for p in prompts]
        done = await asyncio.gather(*(engine.generate(r) for r in requests))
        return [c.token_ids for c in done]

    outputs = []
    for compile in (False, True):
        engine = DecoderEngine.from_pretrained(llama_dir, max_batch=4, max_seq_len=MAX_SEQ, prefill_chunk=8, compile=compile)
        try:
            outputs.append(asyncio.run(generate(engine)))
        finally:
            engine.close()
    assert outputs[0] == outputs[1]
    assert all(len(tokens) > 1 for tokens in outputs[1])
