"""The runtime on the real models (Gemma 3 270M, SmolLM2 135M), prepared into the tierlm cache
by the fixture (minutes on an empty cache, then reused)."""

from __future__ import annotations

import asyncio

import pytest
import torch

from tests.support.models import prepared_model
from tierlm.edge import catalog

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module", params=sorted(catalog.MODELS))
def real(request):
    from transformers import AutoModelForCausalLM

    from tierlm.edge import DecoderEngine

    folder = prepared_model(request.param)
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    hf = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    engine = DecoderEngine.from_pretrained(folder, max_batch=2, max_queue=0, max_seq_len=1024, prefill_chunk=128)
    yield hf, engine
    engine.close()
    torch.set_num_threads(threads)  # the rest of the session runs one thread (tests/conftest.py)


@torch.inference_mode()
def test_long_prompt_logits_and_greedy_match_transformers(real):
    """A prompt past Gemma's 512-token window, fed in 128-token chunks so the sliding layers'
    639-entry rings wrap, decodes like HF."""
    hf, engine = real
    headlines = "Stocks rally as inflation cools. Oil slips on weak demand. Gold steadies near record. "
    ids = engine.tokenizer.encode(headlines * 40)[:700]
    prompt = engine.tokenizer.decode(ids, skip_special_tokens=True)
    prompt_ids = engine.tokenizer(prompt, return_tensors="pt").input_ids
    expected = hf.generate(prompt_ids, max_new_tokens=8, do_sample=False)[0, prompt_ids.shape[1] :].tolist()

    from tierlm.edge import GenerationRequest

    result = asyncio.run(engine.generate(GenerationRequest(prompt=prompt, max_tokens=8, logprobs=True)))
    assert result.prompt_tokens == prompt_ids.shape[1] > 600
    assert list(result.token_ids) == expected
    first = torch.log_softmax(hf(prompt_ids).logits[0, -1].float(), dim=-1)[expected[0]]
    assert result.token_logprobs[0] == pytest.approx(float(first), abs=1e-3)
