"""The session engine: cached sessions across calls, batched calls, TTL, LRU, lost sessions."""

from __future__ import annotations

import asyncio

import pytest
import torch

from tierlm.edge.decoder import load_model
from tierlm.edge.errors import InvalidRequest
from tierlm.edge.speculative.sessions import Draft, Score, SessionEngine, SessionLost


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture(scope="module")
def reference(model_dir):
    """The whole-sequence logits of the same model, from a fresh decoder per call."""
    model = load_model(model_dir)

    def logits(tokens: list[int]) -> torch.Tensor:
        model.setup_cache(1, len(tokens))
        with torch.inference_mode():
            return model(torch.tensor([tokens]), torch.arange(len(tokens))[None], torch.tensor([0]))[0].float()

    return logits


def keep_all(rows: int):
    return Score(rows, lambda logits: (logits.clone(), 10**9))


def sequence(n: int, offset: int = 0) -> list[int]:
    return [(7 * i + offset) % 300 + 3 for i in range(n)]


def test_a_session_continues_from_its_cache(model_dir, reference):
    engine = SessionEngine.from_pretrained(model_dir, max_sessions=2, chunk=8)
    tokens = sequence(40)

    async def calls():
        first = await engine.run("s", 0, tokens[:30], keep_all(3))  # 30 tokens: several chunks
        second = await engine.run("s", 30, tokens[30:], keep_all(8))  # 10 tokens: a chunk, then the rest
        return first, second

    try:
        first, second = asyncio.run(calls())
    finally:
        engine.close()
    want = reference(tokens)
    torch.testing.assert_close(first.value, want[27:30], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(second.value, want[32:40], atol=1e-4, rtol=1e-4)
    assert (first.length, second.length) == (30, 40)
    assert (first.forward_passes, second.forward_passes) == (4, 2)  # 8+8+8+6 tokens, then 2+8


def test_concurrent_sessions_of_different_lengths_share_a_padded_pass(model_dir, reference):
    engine = SessionEngine.from_pretrained(model_dir, max_sessions=4, chunk=16)
    prompts = [sequence(n, offset=n) for n in (3, 9, 14, 5)]

    async def calls():
        return await asyncio.gather(*(engine.run(f"s{i}", 0, p, keep_all(2)) for i, p in enumerate(prompts)))

    try:
        results = asyncio.run(calls())
        passes = engine.forward_passes
    finally:
        engine.close()
    for prompt, result in zip(prompts, results):
        torch.testing.assert_close(result.value, reference(prompt)[-2:], atol=1e-4, rtol=1e-4)
    assert passes < len(prompts)  # rows of different lengths ran together


def test_scoring_keeps_only_what_the_callback_accepts_and_drafting_feeds_its_draws(model_dir, reference):
    engine = SessionEngine.from_pretrained(model_dir, max_sessions=2, chunk=16)
    tokens = sequence(12)

    async def calls():
        kept = await engine.run("s", 0, tokens, Score(1, lambda logits: (None, 8)))
        drafted = await engine.run("s", 8, tokens[8:10], Draft(3, lambda logits: (int(torch.argmax(logits)), None)))
        return kept, drafted

    try:
        kept, drafted = asyncio.run(calls())
    finally:
        engine.close()
    assert kept.length == 8
    draws = [token for token, _ in drafted.value]
    context = tokens[:10]
    for token in draws:  # each draw is the argmax after the context and the earlier draws
        assert token == int(torch.argmax(reference(context)[-1]))
        context.append(token)
    assert drafted.length == 10 + 3 - 1  # the last draw is not fed


def test_drafts_from_a_draft_vocabulary_are_its_best_tokens_and_scores_see_every_token(model_dir, reference):
    tokens = sequence(12)
    full = reference(tokens)[-1]
    # The context's best next token left out: the draft must take the best of the rest.
    best = int(torch.argmax(full))
    vocab = torch.tensor([t for t in range(0, 300, 3) if t != best] + [1])
    engine = SessionEngine.from_pretrained(model_dir, max_sessions=2, chunk=16, draft_vocab=vocab)
    seen = []

    def choose(logits: torch.Tensor) -> tuple[int, None]:
        seen.append(logits.clone())
        return int(torch.argmax(logits)), None

    async def calls():
        drafted = await engine.run("d", 0, tokens, Draft(2, choose))
        scored = await engine.run("s", 0, tokens, keep_all(1))
        return drafted, scored

    try:
        drafted, scored = asyncio.run(calls())
    finally:
        engine.close()
    outside = torch.ones(full.shape[-1], dtype=torch.bool)
    outside[vocab] = False
    assert all(torch.isinf(logits[outside]).all() and logits[outside].max() < 0 for logits in seen)
    torch.testing.assert_close(seen[0][vocab], full[vocab], atol=1e-4, rtol=1e-4)
    assert drafted.value[0][0] == int(vocab[torch.argmax(full[vocab])])
    assert all(token in vocab.tolist() for token, _ in drafted.value)
    torch.testing.assert_close(scored.value[0], full, atol=1e-4, rtol=1e-4)  # a score is never cut


def test_lost_sessions_say_how_much_is_held(model_dir):
    clock = FakeClock()
    engine = SessionEngine.from_pretrained(model_dir, max_sessions=2, ttl_s=10.0, clock=clock)

    async def calls():
        await engine.run("a", 0, sequence(6), keep_all(1))
        with pytest.raises(SessionLost) as beyond:
            await engine.run("a", 9, [5], keep_all(1))  # the engine holds 6 tokens, not 9
        with pytest.raises(SessionLost) as unknown:
            await engine.run("never-opened", 4, [5], keep_all(1))
        cut = await engine.run("a", 3, [5, 6], keep_all(1))  # an earlier start cuts the session there
        clock.now = 11.0  # past the TTL
        await engine.run("b", 0, [4], keep_all(1))  # any call lets the engine expire idle sessions
        with pytest.raises(SessionLost) as expired:
            await engine.run("a", 5, [5], keep_all(1))
        return beyond.value.held, unknown.value.held, cut.length, expired.value.held

    try:
        assert asyncio.run(calls()) == (6, 0, 5, 0)
        assert engine.expirations == 1
    finally:
        engine.close()


def test_the_least_recently_used_idle_session_is_evicted(model_dir):
    clock = FakeClock()
    engine = SessionEngine.from_pretrained(model_dir, max_sessions=2, clock=clock)

    async def calls():
        for key in ("a", "b"):
            clock.now += 1
            await engine.run(key, 0, [3, 4], keep_all(1))
        clock.now += 1
        await engine.run("a", 2, [5], keep_all(1))  # a is now more recent than b
        await engine.run("c", 0, [6], keep_all(1))  # no free slot: b goes
        await engine.run("a", 3, [7], keep_all(1))
        with pytest.raises(SessionLost):
            await engine.run("b", 2, [5], keep_all(1))

    try:
        asyncio.run(calls())
        assert engine.evictions == 1
    finally:
        engine.close()


def test_bad_calls_are_refused_before_they_run(model_dir):
    engine = SessionEngine.from_pretrained(model_dir, max_sessions=1, max_seq_len=32)

    async def calls():
        for start, tokens, step, message in [
            (0, [], keep_all(1), "no tokens"),
            (0, [10**7], keep_all(1), "outside the vocabulary"),
            (0, [-1], keep_all(1), "outside the vocabulary"),
            (0, [3] * 30, Draft(5, lambda logits: (3, None)), "context holds 32"),
            (0, [3], keep_all(2), "rows must be"),
        ]:
            with pytest.raises(InvalidRequest, match=message):
                await engine.run("s", start, tokens, step)

    try:
        asyncio.run(calls())
        assert engine.forward_passes == 0
    finally:
        engine.close()
