"""Speculative decoding on the real models: the int4 Gemma 3 270M artifact drafts, Gemma 3 270M
fp32 verifies, and greedy output is the fp32 model's own, token for token.

bench/speculative.py runs the same pair on 20 prompts x 64 tokens for speed and acceptance; this
test keeps the identity in the suite at a size the CI machine affords.
"""

from __future__ import annotations

import asyncio

import pytest

from tests.support.models import cached_artifact, prepared_model
from tierlm.edge.engine import DecoderEngine
from tierlm.edge.requests import GenerationRequest
from tierlm.edge.speculative.drafter import Drafter, SpeculativeOptions
from tierlm.edge.speculative.sessions import SessionEngine
from tierlm.edge.speculative.verifier import SessionVerifier

MODEL = "gemma-3-270m"
PROMPTS = [
    "If you do much work on computers, eventually you find that there's some task you'd like to automate.",
    "Classes provide a means of bundling data and functionality together. Creating a new class",
    "Gold prices fell sharply after the central bank raised rates, and traders said",
]
NEW_TOKENS = 32

pytestmark = pytest.mark.slow


def test_int4_drafts_verified_by_fp32_give_the_fp32_models_greedy_output() -> None:
    verify_dir, draft_dir = prepared_model(MODEL), cached_artifact(MODEL, "rtn-w4g128")

    async def both() -> tuple[list, list]:
        engine = DecoderEngine.from_pretrained(verify_dir, max_batch=1, max_queue=4, threads=1)
        verifier = SessionVerifier.from_pretrained(verify_dir, max_sessions=2, threads=1)
        drafting = SessionEngine.from_pretrained(draft_dir, max_sessions=2, threads=1)
        drafter = Drafter(drafting, engine.tokenizer, verifier, SpeculativeOptions(4, 8), engine.model.config.eos_token_ids)
        try:
            requests = [GenerationRequest(prompt=p, max_tokens=NEW_TOKENS) for p in PROMPTS]
            alone = [await engine.generate(r) for r in requests]
            speculative = [await drafter.generate(r) for r in requests]
            return alone, speculative
        finally:
            engine.close()
            await drafter.aclose()
            await verifier.aclose()

    alone, speculative = asyncio.run(both())
    for want, got in zip(alone, speculative):
        assert list(got.token_ids) == list(want.token_ids) and len(want.token_ids) == NEW_TOKENS
        assert got.text == want.text
    drafted = sum(r.speculative.drafted_tokens for r in speculative)
    accepted = sum(r.speculative.accepted_tokens for r in speculative)
    # The int4 model drafts the fp32 model's tokens far more often than chance: the pair is a
    # real draft of its verifier, not a run where every round is a correction.
    assert accepted / drafted > 0.3, f"accepted {accepted} of {drafted} drafts"
