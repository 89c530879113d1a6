"""The real Gemma 3 270M in vLLM's CPU build gives transformers' greedy tokens.

The folder is `tierlm model prepare`'s conversion of the packaged GGUF (minutes the first
time, then cached). fp32 on both sides; one prompt is longer than Gemma's 512-token sliding
window, so local and global attention layers both matter.
"""

from __future__ import annotations

import asyncio

import pytest

from tests.support.models import prepared_model
from tierlm.edge import catalog
from tierlm.edge.requests import GenerationRequest

pytest.importorskip("vllm", reason="needs vLLM (requirements/cloud-cpu.txt)")
pytestmark = pytest.mark.slow

NAME = "gemma-3-270m"
NEW_TOKENS = 16
HEADLINES = [
    ("Gold prices rise as the dollar falls", "up"),
    ("Gold slips after strong jobs data", "down"),
    ("Bullion holds steady ahead of the Fed", "neutral"),
]


def prompts() -> list[str]:
    demos = "".join(f"Headline: {h} (day {i})\nDirection: {d}\n" for i in range(14) for h, d in HEADLINES)
    return [
        "The capital of France is",
        "Question: What is 12 plus 30?\nAnswer:",
        demos + "Headline: Gold climbs on rate cut hopes\nDirection:",  # ~800 tokens: past the 512-token window
    ]


@pytest.fixture(scope="module")
def gemma_folder():
    return prepared_model(NAME)


def test_greedy_tokens_match_transformers(gemma_folder):
    import torch

    from tierlm.cloud.engines.vllm_engine import VLLMTextEngine

    model, tokenizer = catalog.load_folder(gemma_folder)
    eos = model.generation_config.eos_token_id
    eos = set(eos) if isinstance(eos, list) else {eos}
    expected = []
    for prompt in prompts():
        ids = tokenizer(prompt, return_tensors="pt").input_ids
        with torch.inference_mode():
            out = model.generate(ids, max_new_tokens=NEW_TOKENS, do_sample=False)
        new = out[0, ids.shape[1] :].tolist()
        # transformers keeps the end-of-sequence token it stopped on; our results leave it out.
        expected.append((ids.shape[1], tuple(new[:-1] if new and new[-1] in eos else new)))
    del model
    assert expected[2][0] > 512, "the long prompt must cross the sliding window"

    engine = VLLMTextEngine(gemma_folder, {"dtype": "float32", "max_model_len": 2048})

    async def run_all():
        try:
            requests = [GenerationRequest(prompt=p, max_tokens=NEW_TOKENS) for p in prompts()]
            return await asyncio.gather(*(engine.generate(r) for r in requests))
        finally:
            await engine.aclose()

    results = asyncio.run(run_all())
    assert [(r.prompt_tokens, r.token_ids) for r in results] == expected
