"""The continuous-batching engine against transformers and against itself."""

from __future__ import annotations

import asyncio
import math

import pytest
import torch

from tierlm.edge import (
    ChatMessage,
    Completion,
    DecoderEngine,
    EngineClosed,
    FinishReason,
    GenerationRequest,
    InvalidRequest,
    QueueFull,
    TokenDelta,
)
from tierlm.errors import MissingResource

MAX_SEQ = 128
PROMPTS = [
    "The market rose today",
    "Gold prices fell sharply after the central bank raised rates and investors",
    "Oil",
    "Shares of tech companies climbed to a record high on Monday. " * 3,  # several prefill chunks
    "Headlines: stocks up, bonds down",
    "The quick brown fox",
    "Traders waited for new data while",
    "Gold",
]


@pytest.fixture(scope="module")
def hf_model(model_dir):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()


@pytest.fixture(scope="module")
def engine(model_dir):
    engine = DecoderEngine.from_pretrained(model_dir, max_batch=8, max_queue=4, max_seq_len=MAX_SEQ, prefill_chunk=8)
    yield engine
    engine.close()


def run(coro):
    return asyncio.run(coro)


async def collect(engine: DecoderEngine, request: GenerationRequest) -> tuple[list[TokenDelta], Completion]:
    deltas = []
    async for event in engine.stream(request):
        if isinstance(event, TokenDelta):
            deltas.append(event)
        else:
            return deltas, event
    raise AssertionError("stream ended without a Completion")


@torch.inference_mode()
def hf_greedy(hf_model, tokenizer, prompt: str, max_tokens: int) -> list[int]:
    ids = tokenizer(prompt, return_tensors="pt").input_ids
    out = hf_model.generate(ids, max_new_tokens=max_tokens, do_sample=False, eos_token_id=tokenizer.eos_token_id)
    return out[0, ids.shape[1] :].tolist()


@torch.inference_mode()
def hf_logprob(hf_model, context: list[int], continuation: list[int]) -> float:
    ids = torch.tensor([context + continuation])
    logp = torch.log_softmax(hf_model(ids).logits[0].float(), dim=-1)
    return sum(float(logp[len(context) - 1 + i, t]) for i, t in enumerate(continuation))


def test_greedy_equals_transformers_generate(engine, hf_model):
    for prompt in PROMPTS[:4]:
        result = run(engine.generate(GenerationRequest(prompt=prompt, max_tokens=24)))
        assert list(result.token_ids) == hf_greedy(hf_model, engine.tokenizer, prompt, 24)
        assert result.finish_reason in (FinishReason.LENGTH, FinishReason.EOS)
        assert result.text == engine.tokenizer.decode(result.token_ids, skip_special_tokens=True)


def test_chat_messages_use_the_template(engine, hf_model):
    messages = [ChatMessage("system", "Be brief."), ChatMessage("user", "Did gold rise?")]
    result = run(engine.generate(GenerationRequest(messages=messages, max_tokens=12)))
    rendered = engine.tokenizer.apply_chat_template(
        [{"role": m.role, "content": m.content} for m in messages], add_generation_prompt=True, tokenize=False
    )
    ids = torch.tensor([engine.tokenizer.encode(rendered, add_special_tokens=False)])
    expected = hf_model.generate(ids, max_new_tokens=12, do_sample=False, eos_token_id=engine.tokenizer.eos_token_id)
    assert list(result.token_ids) == expected[0, ids.shape[1] :].tolist()
    assert result.prompt_tokens == ids.shape[1]


def test_eight_concurrent_streams_equal_single_runs(engine):
    requests = [GenerationRequest(prompt=p, max_tokens=20, request_id=str(i)) for i, p in enumerate(PROMPTS)]
    alone = [run(engine.generate(r)) for r in requests]
    steps_before = engine.stats().decode_steps

    async def together():
        return await asyncio.gather(*(collect(engine, r) for r in requests))

    results = run(together())
    steps = engine.stats().decode_steps - steps_before
    for single, (deltas, final) in zip(alone, results):
        assert final.request_id == single.request_id
        assert final.token_ids == single.token_ids
        assert [d.token_id for d in deltas] == list(final.token_ids)
        assert "".join(d.text for d in deltas) == final.text
    # Requests shared decode steps: far fewer steps than tokens.
    assert steps < sum(len(r.token_ids) for r in alone) / 2


def test_prompts_of_equal_length_arriving_together_share_one_prefill_call(model_dir):
    with DecoderEngine.from_pretrained(model_dir, max_batch=4, max_seq_len=MAX_SEQ, prefill_chunk=32) as engine:
        candidates = ["Gold rose", "Oil fell", "Stocks rose", "Bonds fell", "Rates rose", "Gold fell", "Oil rose"]
        length = len(engine.tokenizer.encode(candidates[0]))
        prompts = [p for p in candidates if len(engine.tokenizer.encode(p)) == length][:4]
        assert len(prompts) >= 3
        requests = [GenerationRequest(prompt=p, max_tokens=6, request_id=str(i)) for i, p in enumerate(prompts)]
        alone = [run(engine.generate(r)) for r in requests]
        calls_before = engine.stats().prefill_chunks

        async def together():
            return await asyncio.gather(*(engine.generate(r) for r in requests))

        results = run(together())
        # All prompts were waiting when the engine thread woke, or came in the next iteration.
        assert engine.stats().prefill_chunks - calls_before <= 2
        assert [r.token_ids for r in results] == [r.token_ids for r in alone]


def test_seeded_sampling_is_reproducible(engine):
    def req(seed):
        return GenerationRequest(prompt=PROMPTS[0], max_tokens=16, temperature=1.0, top_p=0.9, seed=seed)

    first, again, other = (run(engine.generate(req(s))) for s in (7, 7, 8))
    assert first.token_ids == again.token_ids
    assert first.token_ids != other.token_ids

    async def amid_others():  # batching with other requests does not change a seeded draw
        noise = [engine.generate(GenerationRequest(prompt=p, max_tokens=16)) for p in PROMPTS[1:4]]
        return (await asyncio.gather(engine.generate(req(7)), *noise))[0]

    assert run(amid_others()).token_ids == first.token_ids


def test_stop_sequence_trims_the_output(engine):
    full = run(engine.generate(GenerationRequest(prompt=PROMPTS[1], max_tokens=30))).text
    start = next(i for i in range(len(full) // 2, len(full) - 1) if "\ufffd" not in full[i : i + 2])
    stop = full[start : start + 2]
    deltas, result = run(collect(engine, GenerationRequest(prompt=PROMPTS[1], max_tokens=30, stop=["@@", stop])))
    assert result.finish_reason is FinishReason.STOP
    assert result.text == full[: full.index(stop)]
    assert "".join(d.text for d in deltas) == result.text


def test_logprobs_sum_to_the_sequence_logprob(engine, hf_model):
    result = run(
        engine.generate(GenerationRequest(prompt=PROMPTS[4], max_tokens=16, logprobs=True, temperature=0.8, seed=1))
    )
    assert len(result.token_logprobs) == len(result.token_ids)
    assert all(lp <= 0.0 for lp in result.token_logprobs)
    expected = hf_logprob(hf_model, engine.tokenizer.encode(PROMPTS[4]), list(result.token_ids))
    assert math.isclose(sum(result.token_logprobs), expected, rel_tol=1e-4, abs_tol=1e-3)


def test_choice_scores_equal_direct_computation(engine, hf_model):
    choices = [" up", " down", " the market rose", " unchanged today"]
    result = run(engine.generate(GenerationRequest(prompt=PROMPTS[0] + ":", choices=choices)))
    assert result.finish_reason is FinishReason.SCORED
    context = engine.tokenizer.encode(PROMPTS[0] + ":")
    expected = [hf_logprob(hf_model, context, engine.tokenizer.encode(c, add_special_tokens=False)) for c in choices]
    got = [c.logprob for c in result.choices]
    assert [c.text for c in result.choices] == choices
    assert got == pytest.approx(expected, rel=1e-4, abs=1e-3)
    assert result.text == choices[max(range(len(choices)), key=expected.__getitem__)]
    assert any(c.num_tokens > 1 for c in result.choices)


@torch.inference_mode()
def constrained_logprob(hf_model, context: list[int], choice_ids: list[list[int]], choice: list[int]) -> float:
    """Constrained decoding's log-probability of `choice` among `choice_ids`, from full logits."""
    logp = torch.log_softmax(hf_model(torch.tensor([context + choice])).logits[0].float(), dim=-1)
    total = 0.0
    for i, token in enumerate(choice):
        allowed = sorted({c[i] for c in choice_ids if len(c) > i and c[:i] == choice[:i]})
        row = logp[len(context) - 1 + i, allowed]
        total += float(row[allowed.index(token)] - torch.logsumexp(row, dim=0))
    return total


def test_constrained_choice_scores_renormalise_full_logits_over_the_allowed_tokens(engine, hf_model):
    # " unchanged today" and " unchanged" share a prefix: inside it, the allowed set narrows.
    choices = [" up", " down", " unchanged today", " unchanged", " the market rose"]
    prompt = PROMPTS[0] + ":"
    result = run(engine.generate(GenerationRequest(prompt=prompt, choices=choices, constrained_choices=True)))
    context = engine.tokenizer.encode(prompt)
    ids = [engine.tokenizer.encode(c, add_special_tokens=False) for c in choices]
    expected = [constrained_logprob(hf_model, context, ids, c) for c in ids]
    assert [c.logprob for c in result.choices] == pytest.approx(expected, rel=1e-4, abs=1e-4)
    assert result.text == choices[max(range(len(choices)), key=expected.__getitem__)]
    # Single-token choices: the same ranking and label distribution as unconstrained scoring.
    labels = [" on", " the", " to"]
    assert all(len(engine.tokenizer.encode(c, add_special_tokens=False)) == 1 for c in labels)
    full = run(engine.generate(GenerationRequest(prompt=prompt, choices=labels)))
    constrained = run(engine.generate(GenerationRequest(prompt=prompt, choices=labels, constrained_choices=True)))
    renormalised = torch.log_softmax(torch.tensor([c.logprob for c in full.choices]), dim=0)
    assert [c.logprob for c in constrained.choices] == pytest.approx(renormalised.tolist(), abs=1e-5)
    assert constrained.text == full.text


@pytest.mark.parametrize(
    "fields, message",
    [
        (dict(prompt="hi", constrained_choices=True), "constrained_choices"),
        (dict(prompt=""), "prompt is empty"),
        (dict(prompt="x " * 400), "shorten the prompt"),
        (dict(), "exactly one of prompt and messages"),
        (dict(prompt="hi", messages=[ChatMessage("user", "hi")]), "exactly one"),
        (dict(prompt="bad \udc80 text"), "UTF-8"),
        (dict(prompt="hi", max_tokens=0), "max_tokens"),
        (dict(prompt="hi", max_tokens=-3), "max_tokens"),
        (dict(prompt="hi", temperature=-0.1), "temperature"),
        (dict(prompt="hi", temperature=1e6), "temperature"),
        (dict(prompt="hi", temperature=float("nan")), "temperature"),
        (dict(prompt="hi", top_p=0.0), "top_p"),
        (dict(prompt="hi", top_p=1.5), "top_p"),
        (dict(prompt="hi", seed=-1), "seed"),
        (dict(prompt="hi", stop=[""]), "stop"),
        (dict(prompt="hi", stop=["s"] * 17), "stop"),
        (dict(prompt="hi", choices=[]), "choices"),
        (dict(prompt="hi", choices=[f" c{i}" for i in range(65)]), "choices"),
        (dict(prompt="hi", choices=[" up", ""]), "choices"),
    ],
)
def test_invalid_requests_are_rejected(engine, fields, message):
    async def submit():
        with pytest.raises(InvalidRequest, match=message):
            engine.stream(GenerationRequest(**fields))

    run(submit())
    assert run(engine.health()).ok


@pytest.fixture
def small_engine(llama_dir):
    engine = DecoderEngine.from_pretrained(llama_dir, max_batch=1, max_queue=1, max_seq_len=MAX_SEQ, prefill_chunk=8)
    yield engine
    engine.close(drain=False)


LONG = GenerationRequest(prompt="The market", max_tokens=MAX_SEQ)


async def wait_idle(engine: DecoderEngine) -> int:
    """Wait until no request is running or waiting; return the decode steps taken meanwhile."""
    steps = engine.stats().decode_steps
    for _ in range(500):
        stats = engine.stats()
        if stats.running == 0 and stats.waiting == 0:
            return stats.decode_steps - steps
        await asyncio.sleep(0.01)
    raise AssertionError(f"engine still busy: {engine.stats()}")


def test_cancel_and_deadline_free_the_slot(small_engine):
    async def scenario():
        seen = 0
        async for _ in small_engine.stream(LONG):  # a consumer that walks away after two tokens
            seen += 1
            if seen == 2:
                break
        assert await wait_idle(small_engine) <= 1  # the step under way may finish, no more
        with pytest.raises(asyncio.TimeoutError):  # a deadline cancels the awaiting task
            await asyncio.wait_for(small_engine.generate(LONG), timeout=0.05)
        assert await wait_idle(small_engine) <= 1
        return await small_engine.generate(GenerationRequest(prompt="Gold", max_tokens=3))

    result = run(scenario())
    assert result.completion_tokens == 3
    assert small_engine.stats().requests_finished.get("cancelled") == 2


def test_overload_raises_queue_full(small_engine):
    async def scenario():
        running, waiting = small_engine.stream(LONG), small_engine.stream(LONG)
        with pytest.raises(QueueFull) as info:
            small_engine.stream(LONG)
        running.cancel()
        waiting.cancel()
        return info.value

    error = run(scenario())
    assert error.retry_after_s > 0
    assert small_engine.stats().requests_rejected == 1


def test_close_drains_then_refuses(llama_dir):
    engine = DecoderEngine.from_pretrained(llama_dir, max_batch=2, max_queue=2, max_seq_len=MAX_SEQ)

    async def scenario():
        pending = [
            asyncio.ensure_future(engine.generate(GenerationRequest(prompt=p, max_tokens=10))) for p in PROMPTS[:3]
        ]
        await asyncio.sleep(0)  # let them submit
        await engine.aclose(drain=True)
        with pytest.raises(EngineClosed):
            engine.stream(GenerationRequest(prompt="late"))
        return await asyncio.gather(*pending)

    results = run(scenario())
    assert all(r.finish_reason in (FinishReason.LENGTH, FinishReason.EOS) for r in results)
    assert not run(engine.health()).ok


def test_close_without_drain_cancels(llama_dir):
    engine = DecoderEngine.from_pretrained(llama_dir, max_batch=1, max_queue=1, max_seq_len=MAX_SEQ)

    async def scenario():
        pending = [asyncio.ensure_future(engine.generate(LONG)) for _ in range(2)]
        await asyncio.sleep(0)
        await engine.aclose(drain=False)
        return await asyncio.gather(*pending)

    assert [r.finish_reason for r in run(scenario())] == [FinishReason.CANCELLED] * 2


def test_long_prefill_is_chunked_between_decode_steps(engine):
    """While a long prompt is fed, a running stream keeps getting a token per chunk."""
    long_prompt = " ".join(PROMPTS[:3]) * 3
    prompt_tokens = len(engine.tokenizer.encode(long_prompt))
    assert 80 <= prompt_tokens < MAX_SEQ
    order: list[str] = []

    async def consume(name: str, request: GenerationRequest, started: asyncio.Event | None = None):
        async for _event in engine.stream(request):
            order.append(name)
            if started is not None and len(order) == 2:
                started.set()

    async def scenario():
        started = asyncio.Event()
        runner = asyncio.ensure_future(
            consume("a", GenerationRequest(prompt="Gold", max_tokens=60, ignore_eos=True), started)
        )
        await started.wait()
        order.append("submit")
        await consume("b", GenerationRequest(prompt=long_prompt, max_tokens=1))
        await runner

    run(scenario())
    during_prefill = order[order.index("submit") : order.index("b")].count("a")
    chunks = -(-prompt_tokens // engine.prefill_chunk)
    assert during_prefill >= chunks - 2  # one decode step per prompt chunk, give or take the edges


def test_observer_hooks_and_stats(llama_dir):
    from tierlm.edge import EngineObserver

    class Recorder(EngineObserver):
        def __init__(self):
            self.ttft, self.gaps, self.finished, self.rejects = [], [], [], 0

        def on_reject(self):
            self.rejects += 1

        def on_first_token(self, ttft_s):
            self.ttft.append(ttft_s)

        def on_token(self, inter_token_s):
            self.gaps.append(inter_token_s)

        def on_finish(self, completion):
            self.finished.append(completion.finish_reason)

    recorder = Recorder()
    with DecoderEngine.from_pretrained(llama_dir, max_batch=1, max_queue=0, max_seq_len=MAX_SEQ, observer=recorder) as engine:

        async def scenario():
            first = asyncio.ensure_future(
                engine.generate(GenerationRequest(prompt="Gold", max_tokens=64, ignore_eos=True))
            )
            await asyncio.sleep(0)  # submitted; 64 tokens keep it in the only slot for a while
            with pytest.raises(QueueFull):
                engine.stream(GenerationRequest(prompt="Oil"))
            await first
            await engine.generate(GenerationRequest(prompt="Gold", choices=[" up", " down"]))

        run(scenario())
        stats = engine.stats()
    assert recorder.rejects == stats.requests_rejected == 1
    assert len(recorder.ttft) == 2 and len(recorder.gaps) == 63 and all(t >= 0 for t in recorder.ttft + recorder.gaps)
    assert recorder.finished == [FinishReason.LENGTH, FinishReason.SCORED]
    assert stats.requests_finished == {"length": 1, "scored": 1}
    assert stats.completion_tokens == 64 and stats.prompt_tokens > 0 and stats.running == stats.waiting == 0


def test_a_failing_step_fails_its_requests_and_the_engine_carries_on(small_engine):
    from tierlm.edge import EngineError

    model = small_engine.model

    class FailsOnce:
        def __init__(self):
            self.failed = False

        def __call__(self, *args, **kwargs):
            if not self.failed:
                self.failed = True
                raise RuntimeError("simulated kernel failure")
            return model(*args, **kwargs)

        def __getattr__(self, name):  # decode steps and the rest reach the real model
            return getattr(model, name)

    small_engine.model = FailsOnce()

    async def scenario():
        with pytest.raises(EngineError, match="simulated kernel failure"):
            await small_engine.generate(GenerationRequest(prompt="Gold", max_tokens=3))
        return await small_engine.generate(GenerationRequest(prompt="Gold", max_tokens=3))

    assert run(scenario()).completion_tokens == 3
    assert run(small_engine.health()).ok and small_engine.stats().requests_failed == 1


def test_generation_stops_when_the_context_is_full(small_engine):
    prompt = " ".join(PROMPTS[:3]) * 3
    prompt_tokens = len(small_engine.tokenizer.encode(prompt))
    assert MAX_SEQ - 40 < prompt_tokens < MAX_SEQ
    result = run(small_engine.generate(GenerationRequest(prompt=prompt, max_tokens=1000, ignore_eos=True)))
    assert result.finish_reason is FinishReason.LENGTH
    # Positions 0..MAX_SEQ-1 hold the prompt and all but the last generated token.
    assert result.prompt_tokens + result.completion_tokens == MAX_SEQ + 1


def test_from_pretrained_loads_on_a_thread_that_has_exited(llama_dir, monkeypatch):
    """Loading must leave no torch work on a long-lived thread (see `on_passing_thread`)."""
    import threading

    from tierlm.edge import engine as engine_module

    loaders: list[threading.Thread] = []
    real_load = engine_module.load_model

    def recording_load(*args, **kwargs):
        loaders.append(threading.current_thread())
        return real_load(*args, **kwargs)

    monkeypatch.setattr(engine_module, "load_model", recording_load)
    with DecoderEngine.from_pretrained(llama_dir, max_batch=1, max_queue=0, max_seq_len=MAX_SEQ) as engine:
        assert run(engine.generate(GenerationRequest(prompt="Gold", max_tokens=2))).finish_reason
    assert len(loaders) == 1
    assert loaders[0] is not threading.current_thread() and not loaders[0].is_alive()


def test_a_failed_load_raises_on_the_callers_thread(tmp_path):
    with pytest.raises(MissingResource, match="no config.json"):
        DecoderEngine.from_pretrained(tmp_path, max_batch=1)
