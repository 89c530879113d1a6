"""VLLMTextEngine (vLLM's CPU build) against the edge engine on the same tiny models.

Both run fp32 greedy on the same folder, so token ids must agree exactly and log-probs to
rounding. Gemma 3 here has sliding-window layers (window 6) and prompts longer than the
window, the configuration the real Gemma 3 270M has.
"""

from __future__ import annotations

import asyncio

import pytest

from tierlm.edge.errors import EngineClosed, InvalidRequest
from tierlm.edge.requests import Completion, FinishReason, GenerationRequest, TokenDelta

pytest.importorskip("vllm", reason="needs vLLM (requirements/cloud-cpu.txt)")
pytestmark = pytest.mark.slow

PROMPTS = [
    "The market rose today",
    "Gold prices fell sharply after the central bank raised rates and",
    "Oil futures",
    "Headlines: stocks up, bonds down, and",
]
# vLLM's CPU attention takes head sizes 32, 64, 80, ...: hidden 128 gives Llama 32 and Gemma 64.
HIDDEN = 128
MAX_LEN = 256  # the tiny models' max_position_embeddings


@pytest.fixture(scope="module")
def runner():
    # One event loop for the module: vLLM's output handler lives on the loop it started on.
    with asyncio.Runner() as loop_runner:
        yield loop_runner


@pytest.fixture(scope="module", params=["llama", "gemma3"])
def model_dir(request, tmp_path_factory):
    from tierlm.edge.tiny import build_model

    path = tmp_path_factory.mktemp(f"vllm-{request.param}")
    build_model(path, request.param, hidden_size=HIDDEN)
    return path


@pytest.fixture(scope="module")
def engines(model_dir, runner):
    """(vLLM engine, edge engine) on the same folder, both fp32."""
    from tierlm.cloud.engines.vllm_engine import VLLMTextEngine
    from tierlm.edge.engine import DecoderEngine

    vllm_engine = VLLMTextEngine(model_dir, {"dtype": "float32", "max_model_len": MAX_LEN})
    edge_engine = DecoderEngine.from_pretrained(model_dir, max_batch=4, max_queue=16, threads=1)
    yield vllm_engine, edge_engine
    edge_engine.close()
    runner.run(vllm_engine.aclose())


async def collect(engine, request: GenerationRequest) -> tuple[list[TokenDelta], Completion]:
    deltas, final = [], None
    async for event in engine.stream(request):
        if isinstance(event, Completion):
            final = event
        else:
            deltas.append(event)
    return deltas, final


def test_greedy_tokens_and_logprobs_match_the_edge_engine(engines, runner):
    vllm_engine, edge_engine = engines
    for prompt in PROMPTS:
        request = GenerationRequest(prompt=prompt, max_tokens=16, logprobs=True)
        got = runner.run(vllm_engine.generate(request))
        want = runner.run(edge_engine.generate(request))
        assert got.token_ids == want.token_ids, prompt
        assert (got.text, got.finish_reason, got.prompt_tokens) == (want.text, want.finish_reason, want.prompt_tokens)
        assert got.token_logprobs == pytest.approx(want.token_logprobs, abs=2e-3)


def test_stream_adds_up_to_the_unary_result(engines, runner):
    vllm_engine, _ = engines
    request = GenerationRequest(prompt=PROMPTS[1], max_tokens=12, logprobs=True)
    deltas, final = runner.run(collect(vllm_engine, request))
    assert tuple(d.token_id for d in deltas) == final.token_ids
    assert "".join(d.text for d in deltas) == final.text
    assert tuple(d.logprob for d in deltas) == final.token_logprobs
    assert final.token_ids == runner.run(vllm_engine.generate(request)).token_ids


def test_concurrent_requests_match_sequential_ones(engines, runner):
    vllm_engine, _ = engines
    requests = [GenerationRequest(prompt=PROMPTS[i % len(PROMPTS)], max_tokens=10) for i in range(12)]
    sequential = [runner.run(vllm_engine.generate(r)).token_ids for r in requests[: len(PROMPTS)]]

    async def together():
        return await asyncio.gather(*(vllm_engine.generate(r) for r in requests))

    results = runner.run(together())
    assert [r.token_ids for r in results] == [sequential[i % len(PROMPTS)] for i in range(12)]


def test_choice_scores_match_the_edge_engine(engines, runner):
    vllm_engine, edge_engine = engines
    request = GenerationRequest(prompt="Headlines: stocks", choices=[" up", " down", " unchanged today"])
    got = runner.run(vllm_engine.generate(request))
    want = runner.run(edge_engine.generate(request))
    assert got.finish_reason is FinishReason.SCORED and got.text == want.text
    assert [c.num_tokens for c in got.choices] == [c.num_tokens for c in want.choices]
    assert [c.logprob for c in got.choices] == pytest.approx([c.logprob for c in want.choices], abs=2e-3)


def test_constrained_choice_scores_match_the_edge_engine(engines, runner):
    vllm_engine, edge_engine = engines
    # Two choices share " unchanged": inside it the allowed tokens narrow to their next ones.
    choices = [" up", " down", " unchanged today", " unchanged", " the market rose"]
    request = GenerationRequest(prompt="Headlines: stocks", choices=choices, constrained_choices=True)
    got = runner.run(vllm_engine.generate(request))
    want = runner.run(edge_engine.generate(request))
    assert got.text == want.text
    assert [c.logprob for c in got.choices] == pytest.approx([c.logprob for c in want.choices], abs=2e-3)


def test_single_token_choices_take_one_engine_request(engines, runner, monkeypatch):
    vllm_engine, edge_engine = engines
    labels = [" on", " the", " to"]  # one token each in the tiny tokenizer
    assert all(len(vllm_engine.tokenizer.encode(c, add_special_tokens=False)) == 1 for c in labels)
    sent = []
    outputs = vllm_engine._outputs
    monkeypatch.setattr(vllm_engine, "_outputs", lambda ids, params, rid: sent.append(rid) or outputs(ids, params, rid))
    request = GenerationRequest(prompt=PROMPTS[1], choices=labels)
    got = runner.run(vllm_engine.generate(request))
    assert len(sent) == 1
    want = runner.run(edge_engine.generate(request))
    assert [c.logprob for c in got.choices] == pytest.approx([c.logprob for c in want.choices], abs=2e-3)


def test_stop_sequence_cuts_the_text(engines, runner):
    vllm_engine, _ = engines
    full = runner.run(vllm_engine.generate(GenerationRequest(prompt=PROMPTS[0], max_tokens=16)))
    stop = full.text[len(full.text) // 2 :][:3]
    assert stop.strip(), f"greedy text too short to pick a stop sequence from: {full.text!r}"
    cut = runner.run(vllm_engine.generate(GenerationRequest(prompt=PROMPTS[0], max_tokens=16, stop=[stop])))
    assert cut.finish_reason is FinishReason.STOP
    assert cut.text == full.text[: full.text.index(stop)]


def test_verify_rounds_accept_the_models_own_tokens_and_correct_the_first_wrong_one(engines, runner):
    """VLLMVerifier over the prefix cache: drafts equal to the model's greedy tokens are accepted,
    a wrong one is replaced by the model's own token, a second round sends only what is new, and
    a round past what the session holds is SessionLost."""
    from tierlm.cloud.engines.vllm_verifier import VLLMVerifier
    from tierlm.edge.speculative.sessions import SessionLost
    from tierlm.edge.speculative.verifier import VerifyRound

    vllm_engine, edge_engine = engines
    verifier = VLLMVerifier(vllm_engine, max_sessions=2)
    request = GenerationRequest(prompt=PROMPTS[1], max_tokens=6)
    tokens = list(runner.run(edge_engine.generate(request)).token_ids)
    prompt = edge_engine.tokenizer(PROMPTS[1])["input_ids"]

    first = runner.run(verifier.verify(VerifyRound("s", 0, tuple(prompt), tuple(tokens[:3]), logprobs=True)))
    assert (first.accepted, first.next_token, first.length) == (3, tokens[3], len(prompt) + 3)
    assert len(first.logprobs) == 4 and all(lp <= 0 for lp in first.logprobs)
    wrong = (tokens[5] + 1) % vllm_engine.vocab_size
    second = runner.run(verifier.verify(VerifyRound("s", first.length, (first.next_token,), (tokens[4], wrong))))
    assert (second.accepted, second.next_token, second.length) == (1, tokens[5], len(prompt) + 5)
    with pytest.raises(SessionLost, match="resend the context from position 0"):
        runner.run(verifier.verify(VerifyRound("unknown", 4, (tokens[0],), (tokens[1],))))


def test_bad_requests_are_refused_before_they_run(engines):
    vllm_engine, _ = engines
    with pytest.raises(InvalidRequest, match="context"):
        vllm_engine.stream(GenerationRequest(prompt="stocks " * MAX_LEN, max_tokens=4))
    with pytest.raises(InvalidRequest, match="max_tokens"):
        vllm_engine.stream(GenerationRequest(prompt=PROMPTS[0], max_tokens=0))
    with pytest.raises(InvalidRequest, match="exactly one"):
        vllm_engine.stream(GenerationRequest(max_tokens=4))


def test_leaving_a_stream_early_aborts_the_request(engines, runner):
    vllm_engine, _ = engines

    async def first_token_then_leave():
        stream = vllm_engine.stream(GenerationRequest(prompt=PROMPTS[2], max_tokens=200, ignore_eos=True))
        first = await stream.__anext__()
        stream.cancel()
        for _ in range(100):  # the abort reaches vLLM's engine core asynchronously
            if vllm_engine._llm.get_num_unfinished_requests() == 0:
                return first
            await asyncio.sleep(0.05)
        raise AssertionError("the request was still running after the stream was cancelled")

    assert isinstance(runner.run(first_token_then_leave()), TokenDelta)
    assert runner.run(vllm_engine.generate(GenerationRequest(prompt=PROMPTS[2], max_tokens=4))).completion_tokens == 4


def test_health_then_closed(tmp_path_factory, runner):
    from tierlm.cloud.engines.vllm_engine import VLLMTextEngine
    from tierlm.edge.tiny import build_model

    path = tmp_path_factory.mktemp("vllm-close")
    build_model(path, "llama", hidden_size=HIDDEN)
    engine = VLLMTextEngine(path, {"dtype": "float32", "max_model_len": MAX_LEN})
    try:
        assert runner.run(engine.health()).ok
    finally:
        runner.run(engine.aclose())
    assert not runner.run(engine.health()).ok
    with pytest.raises(EngineClosed):
        engine.stream(GenerationRequest(prompt=PROMPTS[0], max_tokens=4))
