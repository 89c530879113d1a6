"""Speculative decoding on tiny random models: exactness, the Verify contract and its faults.

The verifier is the conftest's tiny model (seed 0); the drafter is another random model of the
same family and tokenizer (seed 1), so drafts are often wrong and every path (acceptance,
rejection, correction, residual sampling) runs.
"""

from __future__ import annotations

import asyncio
import time

import grpc
import numpy as np
import pytest
import torch
from scipy.stats import chisquare

from tests.support.aio import BackgroundLoop
from tests.support.ports import free_port
from tests.support.prompts import PROMPTS
from tierlm.edge.engine import DecoderEngine
from tierlm.edge.requests import GenerationRequest
from tierlm.edge.sampling import probabilities
from tierlm.edge.server import SpeculationConfig, load_generator, start_edge
from tierlm.edge.speculative.client import AddedLatency, GrpcVerifier, VerifierEndpoint
from tierlm.edge.speculative.drafter import Drafter, SpeculativeOptions
from tierlm.edge.speculative.service import SpeculativeGenerator
from tierlm.edge.speculative.sessions import SessionEngine
from tierlm.edge.speculative.verifier import SessionVerifier
from tierlm.edge.speculative.wire import SESSION_LENGTH_KEY, STATS_KEY
from tierlm.edge.tiny import build_model
from tierlm.serving import ServerConfig
from tierlm.v1 import generator_pb2, generator_pb2_grpc


@pytest.fixture(scope="session")
def draft_dirs(tmp_path_factory):
    """Per family, a second random model with the same tokenizer: a poor but honest drafter."""
    dirs = {}
    for family in ("llama", "gemma3"):
        path = tmp_path_factory.mktemp(f"draft-{family}")
        build_model(path, family, seed=1)
        dirs[family] = path
    return dirs


@pytest.fixture(scope="module", params=["llama", "gemma3"])
def pair(request, llama_dir, gemma_dir, draft_dirs):
    """(verifier-alone engine, speculative drafter, draft-equals-verifier drafter) for a family."""
    verify_dir = llama_dir if request.param == "llama" else gemma_dir
    engine = DecoderEngine.from_pretrained(verify_dir, max_batch=8, max_queue=64, threads=1)
    verifier = SessionVerifier.from_pretrained(verify_dir, max_sessions=16, threads=1)
    drafting = SessionEngine.from_pretrained(draft_dirs[request.param], max_sessions=16, threads=1)
    eos = engine.model.config.eos_token_ids
    drafter = Drafter(drafting, engine.tokenizer, verifier, SpeculativeOptions(3, 6), eos)
    twin = Drafter(SessionEngine.from_pretrained(verify_dir, max_sessions=16), engine.tokenizer, verifier, SpeculativeOptions(4, 8), eos)
    yield engine, drafter, twin
    engine.close()
    for closing in (drafter.aclose(), twin.sessions.aclose(), verifier.aclose()):
        asyncio.run(closing)


def test_greedy_output_is_the_verifiers_token_for_token(pair):
    engine, drafter, twin = pair

    async def all_prompts():
        requests = [GenerationRequest(prompt=p, max_tokens=48, logprobs=True) for p in PROMPTS]
        alone = await asyncio.gather(*(engine.generate(r) for r in requests))
        speculative = await asyncio.gather(*(drafter.generate(r) for r in requests))  # rounds of 8 sessions batched
        perfect = await asyncio.gather(*(twin.generate(r) for r in requests))
        return alone, speculative, perfect

    alone, speculative, perfect = asyncio.run(all_prompts())
    for want, got, same in zip(alone, speculative, perfect):
        assert got.token_ids == want.token_ids and same.token_ids == want.token_ids
        assert (got.text, got.finish_reason) == (want.text, want.finish_reason)
        assert got.token_logprobs == pytest.approx(want.token_logprobs, abs=1e-4)
        stats = got.speculative
        assert stats.rounds > 0 and stats.accepted_tokens <= stats.drafted_tokens
        assert stats.verifier_passes >= stats.rounds
        assert same.speculative.accepted_tokens == same.speculative.drafted_tokens  # a perfect draft is always accepted
    poor = sum(r.speculative.accepted_tokens for r in speculative) / sum(r.speculative.drafted_tokens for r in speculative)
    assert poor < 1.0  # the random drafter really was checked and corrected


def test_stop_sequences_and_max_tokens_end_where_the_verifiers_would(pair):
    engine, drafter, _ = pair
    for request in [
        GenerationRequest(prompt=PROMPTS[0], max_tokens=1),
        GenerationRequest(prompt=PROMPTS[1], max_tokens=7),
        GenerationRequest(prompt=PROMPTS[2], max_tokens=40, stop=("e",)),
    ]:
        want = asyncio.run(engine.generate(request))
        got = asyncio.run(drafter.generate(request))
        assert (got.token_ids, got.text, got.finish_reason) == (want.token_ids, want.text, want.finish_reason)


def _exact_joint(model_dir, prompt: str, temperature: float, top_p: float) -> dict[tuple[int, int], float]:
    """P(first two tokens) under the verifier's sampling distribution, enumerated."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    ids = tokenizer(prompt, return_tensors="pt").input_ids
    with torch.inference_mode():
        first = probabilities(model(ids).logits[0, -1], temperature, top_p)
        candidates = torch.nonzero(first > 1e-6)[:, 0]
        after = model(torch.cat([ids.expand(len(candidates), -1), candidates[:, None]], dim=1)).logits[:, -1]
        second = probabilities(after, temperature, top_p)
    return {
        (int(t1), int(t2)): float(first[t1] * second[row, t2])
        for row, t1 in enumerate(candidates)
        for t2 in torch.nonzero(second[row] > 1e-7)[:, 0]
    }


def _chi_square_p(samples: list[tuple[int, int]], joint: dict[tuple[int, int], float]) -> float:
    """Pearson's test of the samples against ``joint``; cells expected below 5 are pooled."""
    n = len(samples)
    counts: dict[tuple[int, int], int] = {}
    for s in samples:
        counts[s] = counts.get(s, 0) + 1
    big = [cell for cell, p in joint.items() if p * n >= 5]
    observed = [counts.get(cell, 0) for cell in big]
    expected = [joint[cell] * n for cell in big]
    observed.append(n - sum(observed))
    expected.append(n - sum(expected))
    return float(chisquare(np.array(observed), np.array(expected)).pvalue)


@pytest.mark.parametrize("draft_vocab", [None, "even ids"])
def test_sampled_output_follows_the_verifiers_distribution(gemma_dir, draft_dirs, draft_vocab):
    """2000 seeded speculative samples of the first two tokens against the verifier's exact joint
    distribution (chi-square); the drafter's own distribution, as a control, is rejected. With a
    draft vocabulary (half the tokens) drafts come from the cut distribution, and the tokens it
    leaves out reach the output through the verifier's residual alone."""
    temperature, top_p, n = 1.0, 0.95, 2000
    prompt = PROMPTS[3]
    verifier = SessionVerifier.from_pretrained(gemma_dir, max_sessions=64, threads=1)
    vocab = None if draft_vocab is None else torch.arange(0, verifier.sessions.vocab_size, 2)
    drafting = SessionEngine.from_pretrained(draft_dirs["gemma3"], max_sessions=64, threads=1, draft_vocab=vocab)
    from transformers import AutoTokenizer

    drafter = Drafter(drafting, AutoTokenizer.from_pretrained(gemma_dir), verifier, SpeculativeOptions(2, 2))

    async def sample_all() -> list[tuple[int, int]]:
        gate = asyncio.Semaphore(48)

        async def one(seed: int) -> tuple[int, int]:
            async with gate:
                request = GenerationRequest(prompt=prompt, max_tokens=3, temperature=temperature, top_p=top_p, seed=seed, ignore_eos=True)
                return tuple((await drafter.generate(request, k=2, max_k=2)).token_ids[:2])

        try:
            return await asyncio.gather(*(one(seed) for seed in range(n)))
        finally:
            await drafter.aclose()
            await verifier.aclose()

    samples = asyncio.run(sample_all())
    verifier_p = _chi_square_p(samples, _exact_joint(gemma_dir, prompt, temperature, top_p))
    drafter_p = _chi_square_p(samples, _exact_joint(draft_dirs["gemma3"], prompt, temperature, top_p))
    assert verifier_p > 1e-3, f"speculative samples do not follow the verifier (p={verifier_p:.2e})"
    assert drafter_p < 1e-6, f"the test cannot tell the drafter's distribution from the verifier's (p={drafter_p:.2e})"


# ---- the Verify contract over gRPC --------------------------------------------------------


@pytest.fixture(scope="module")
def loop():
    background = BackgroundLoop()
    yield background
    background.close()


def _verifier_node(loop, model_dir, port: int = 0, ttl_s: float = 300.0):
    generator = load_generator(model_dir, "cloud", 1, 2, 8, SpeculationConfig(verify_sessions=4, session_ttl_s=ttl_s))
    server = loop.run(start_edge(generator, ServerConfig(port=port)))
    return server, generator


def _stop(loop, server, generator) -> None:
    loop.run(server.stop(grace_s=0))
    generator.engine.close(drain=False)
    loop.run(generator.aclose_speculation())


def _drafter_node(loop, draft_dir, verifier_port: int, rtt_s: float = 0.0, timeout_s: float = 10.0):
    """A drafting edge node whose channel to the verifier adds ``rtt_s`` per call."""
    engine = DecoderEngine.from_pretrained(draft_dir, max_batch=2, max_queue=8, threads=1)
    client = GrpcVerifier(VerifierEndpoint(f"127.0.0.1:{verifier_port}", timeout_s), [AddedLatency(rtt_s)] if rtt_s else [])
    drafting = SessionEngine.from_pretrained(draft_dir, max_sessions=4, threads=1)
    drafter = Drafter(drafting, engine.tokenizer, client, SpeculativeOptions(3, 6), engine.model.config.eos_token_ids)
    generator = SpeculativeGenerator(engine, "draft", "edge", drafter=drafter)
    return loop.run(start_edge(generator, ServerConfig())), generator


@pytest.fixture(scope="module")
def nodes(loop, gemma_dir, draft_dirs):
    verifier = _verifier_node(loop, gemma_dir)
    drafter = _drafter_node(loop, draft_dirs["gemma3"], verifier[0].port)
    yield verifier, drafter
    _stop(loop, *drafter)
    _stop(loop, *verifier)


def _stub(server) -> generator_pb2_grpc.GeneratorStub:
    return generator_pb2_grpc.GeneratorStub(grpc.insecure_channel(f"127.0.0.1:{server.port}"))


def speculative(prompt: str, max_tokens: int = 40, **extra) -> generator_pb2.GenerateRequest:
    return generator_pb2.GenerateRequest(prompt=prompt, max_tokens=max_tokens, speculative=generator_pb2.SpeculativeOptions(k=3), **extra)


def test_a_drafting_node_answers_with_the_verifier_nodes_text(nodes):
    (verifier, _), (drafter, _) = nodes
    for prompt in PROMPTS[:3]:
        alone = _stub(verifier).Generate(generator_pb2.GenerateRequest(prompt=prompt, max_tokens=40), timeout=60)
        answer = _stub(drafter).Generate(speculative(prompt), timeout=60)
        assert answer.text == alone.text and answer.usage == alone.usage
        assert answer.speculative.rounds > 0 and answer.speculative.verifier_tokens > answer.usage.prompt_tokens
        assert answer.model == answer.speculative.verifier_model == alone.model
        streamed = list(_stub(drafter).GenerateStream(speculative(prompt), timeout=60))
        assert "".join(c.text for c in streamed) == alone.text and streamed[-1].speculative.rounds > 0


def test_a_node_drafting_from_a_frequent_vocabulary_answers_with_the_verifiers_text(loop, nodes, draft_dirs, tmp_path):
    (verifier, _), _ = nodes
    traffic = tmp_path / "traffic.txt"
    traffic.write_text("\n\n".join(PROMPTS[3:]))  # the vocabulary's texts: not the prompts asked below
    speculation = SpeculationConfig(VerifierEndpoint(f"127.0.0.1:{verifier.port}", 10.0), draft_sessions=2,
                                    draft_vocab_text=traffic, draft_vocab_size=40)
    generator = load_generator(draft_dirs["gemma3"], "edge", 1, 2, 8, speculation)
    drafter = loop.run(start_edge(generator, ServerConfig()))
    try:
        vocab = generator.drafter.sessions.draft_vocab
        eos = generator.engine.model.config.eos_token_ids
        assert 40 <= len(vocab) <= 40 + len(eos) and set(eos) <= set(vocab.tolist())
        for prompt in PROMPTS[:3]:
            alone = _stub(verifier).Generate(generator_pb2.GenerateRequest(prompt=prompt, max_tokens=40), timeout=60)
            answer = _stub(drafter).Generate(speculative(prompt), timeout=60)
            assert answer.text == alone.text and answer.speculative.rounds > 0
    finally:
        _stop(loop, drafter, generator)


@pytest.mark.parametrize(
    "fields, message",
    [
        (dict(start=0, tokens=[3], draft_tokens=[]), "1 to 16 draft tokens"),
        (dict(start=0, tokens=[3], draft_tokens=[4] * 17), "1 to 16 draft tokens"),
        (dict(start=0, tokens=[], draft_tokens=[4]), "tokens is empty"),
        (dict(start=0, tokens=[3, 10**6], draft_tokens=[4]), "outside the verifier's vocabulary"),
        (dict(start=0, tokens=[3], draft_tokens=[-2]), "outside the verifier's vocabulary"),
        (dict(start=0, tokens=[3], draft_tokens=[4], temperature=1.0), "the distribution each draft was drawn from"),
        (dict(start=0, tokens=[3], draft_tokens=[4], temperature=1.0,
              draft_distributions=[generator_pb2.DraftDistribution(token_ids=[5], probs=[1.0])]), "probability 0"),
        (dict(start=0, tokens=[3], draft_tokens=[4], temperature=1.0,
              draft_distributions=[generator_pb2.DraftDistribution(token_ids=[4, 5], probs=[0.9])]), "2 token_ids but 1 probs"),
        (dict(start=0, tokens=[3], draft_tokens=[4], temperature=9.0), "temperature"),
        (dict(session_id="", start=0, tokens=[3], draft_tokens=[4]), "session_id"),
    ],
)
def test_bad_verify_rounds_are_invalid_argument(nodes, fields, message):
    (verifier, _), _ = nodes
    request = generator_pb2.VerifyRequest(**{"session_id": "bad-input", **fields})
    with pytest.raises(grpc.RpcError) as caught:
        _stub(verifier).Verify(request, timeout=30)
    assert caught.value.code() is grpc.StatusCode.INVALID_ARGUMENT and message in caught.value.details()


def test_an_unknown_session_is_invalid_argument_saying_what_is_held(nodes):
    (verifier, _), _ = nodes
    stub = _stub(verifier)
    with pytest.raises(grpc.RpcError) as caught:
        stub.Verify(generator_pb2.VerifyRequest(session_id="never-opened", start=12, tokens=[3], draft_tokens=[4]), timeout=30)
    assert caught.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert dict(caught.value.trailing_metadata())[SESSION_LENGTH_KEY] == "0"
    opened = stub.Verify(generator_pb2.VerifyRequest(session_id="s", start=0, tokens=[2, 40, 41], draft_tokens=[42, 43]), timeout=30)
    assert opened.length == 3 + opened.accepted and opened.processed_tokens == 5 and opened.forward_passes == 1
    with pytest.raises(grpc.RpcError) as beyond:
        stub.Verify(generator_pb2.VerifyRequest(session_id="s", start=opened.length + 2, tokens=[3], draft_tokens=[4]), timeout=30)
    assert dict(beyond.value.trailing_metadata())[SESSION_LENGTH_KEY] == str(opened.length)


def test_nodes_say_what_they_cannot_do(nodes):
    (verifier, _), (drafter, _) = nodes
    with pytest.raises(grpc.RpcError) as verify:
        _stub(drafter).Verify(generator_pb2.VerifyRequest(session_id="s", start=0, tokens=[3], draft_tokens=[4]), timeout=30)
    assert verify.value.code() is grpc.StatusCode.UNIMPLEMENTED
    with pytest.raises(grpc.RpcError) as draft:
        _stub(verifier).Generate(speculative(PROMPTS[0]), timeout=30)
    assert draft.value.code() is grpc.StatusCode.FAILED_PRECONDITION and "--verifier" in draft.value.details()
    for bad in (speculative(PROMPTS[0], choices=[" up", " down"]),
                generator_pb2.GenerateRequest(prompt="x", max_tokens=4, speculative=generator_pb2.SpeculativeOptions(k=20))):
        with pytest.raises(grpc.RpcError) as refused:
            _stub(drafter).Generate(bad, timeout=30)
        assert refused.value.code() is grpc.StatusCode.INVALID_ARGUMENT


def test_a_verifier_restarted_mid_generation_is_sent_the_context_again(loop, gemma_dir, draft_dirs):
    port = free_port()
    first = _verifier_node(loop, gemma_dir, port)
    drafter = _drafter_node(loop, draft_dirs["gemma3"], port, rtt_s=0.05)
    try:
        alone = _stub(first[0]).Generate(generator_pb2.GenerateRequest(prompt=PROMPTS[1], max_tokens=60), timeout=60)
        chunks = _stub(drafter[0]).GenerateStream(speculative(PROMPTS[1], max_tokens=60), timeout=120)
        text = next(chunks).text  # the generation is under way: restart the verifier
        _stop(loop, *first)
        first = _verifier_node(loop, gemma_dir, port)
        rest = list(chunks)
        assert text + "".join(c.text for c in rest) == alone.text
        assert rest[-1].speculative.session_rebuilds >= 1
    finally:
        _stop(loop, *drafter)
        _stop(loop, *first)


def test_expired_sessions_are_rebuilt_from_the_drafters_context(loop, gemma_dir, draft_dirs):
    verifier = _verifier_node(loop, gemma_dir, ttl_s=0.1)
    drafter = _drafter_node(loop, draft_dirs["gemma3"], verifier[0].port, rtt_s=0.3)  # every round outlives the TTL
    try:
        alone = _stub(verifier[0]).Generate(generator_pb2.GenerateRequest(prompt=PROMPTS[4], max_tokens=12), timeout=60)
        answer = _stub(drafter[0]).Generate(speculative(PROMPTS[4], max_tokens=12), timeout=120)
        assert answer.text == alone.text
        stats = answer.speculative
        assert stats.rounds >= 2 and stats.session_rebuilds == stats.rounds - 1
        assert stats.verifier_tokens > stats.rounds * answer.usage.prompt_tokens  # each rebuild resent the context
    finally:
        _stop(loop, *drafter)
        _stop(loop, *verifier)


def test_an_unreachable_verifier_fails_the_generation_with_what_it_cost(loop, gemma_dir, draft_dirs):
    verifier = _verifier_node(loop, gemma_dir)
    drafter = _drafter_node(loop, draft_dirs["gemma3"], verifier[0].port, rtt_s=0.05, timeout_s=1.0)
    try:
        chunks = _stub(drafter[0]).GenerateStream(speculative(PROMPTS[1], max_tokens=200), timeout=60)
        next(chunks)
        _stop(loop, *verifier)
        started = time.monotonic()
        with pytest.raises(grpc.RpcError) as caught:
            list(chunks)
        assert caught.value.code() is grpc.StatusCode.UNAVAILABLE and "verifier" in caught.value.details()
        assert time.monotonic() - started < 10
        stats = generator_pb2.SpeculativeStats.FromString(dict(caught.value.trailing_metadata())[STATS_KEY])
        assert stats.rounds >= 1 and stats.verifier_tokens > 0
    finally:
        _stop(loop, *drafter)
