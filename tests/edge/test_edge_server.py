"""The edge node over a real gRPC channel on 127.0.0.1, on a tiny model built in the test."""

from __future__ import annotations

import math

import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import grpc
import pytest
import torch

from tests.support.aio import BackgroundLoop
from tests.support.prompts import PROMPTS
from tierlm.edge.server import load_generator, start_edge
from tierlm.serving import ServerConfig
from tierlm.v1 import generator_pb2, generator_pb2_grpc


@pytest.fixture(scope="module")
def loop():
    background = BackgroundLoop()
    yield background
    background.close()


def _start(loop, model_dir, **limits):
    generator = load_generator(model_dir, "edge", threads=1, **limits)
    server = loop.run(start_edge(generator, ServerConfig()))
    return server, generator


@pytest.fixture(scope="module")
def edge(loop, llama_dir):
    server, generator = _start(loop, llama_dir, max_batch=8, max_queue=8)
    yield server, generator
    loop.run(server.stop(grace_s=0))
    generator.engine.close(drain=False)


@pytest.fixture
def stub(edge):
    with grpc.insecure_channel(f"127.0.0.1:{edge[0].port}") as channel:
        yield generator_pb2_grpc.GeneratorStub(channel)


@torch.inference_mode()
def hf_greedy_text(model_dir, prompt: str, max_tokens: int) -> str:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    ids = tokenizer(prompt, return_tensors="pt").input_ids
    out = model.generate(ids, max_new_tokens=max_tokens, do_sample=False, eos_token_id=tokenizer.eos_token_id)
    return tokenizer.decode(out[0, ids.shape[1] :], skip_special_tokens=True)


def greedy(prompt: str, max_tokens: int = 16, **extra) -> generator_pb2.GenerateRequest:
    return generator_pb2.GenerateRequest(prompt=prompt, max_tokens=max_tokens, **extra)


def test_unary_and_stream_equal_running_the_model_directly(stub, llama_dir):
    expected = hf_greedy_text(llama_dir, PROMPTS[1], 16)
    unary = stub.Generate(greedy(PROMPTS[1], return_logprobs=True), timeout=30)
    assert unary.text == expected
    assert unary.is_final and unary.tier == "edge" and unary.usage.completion_tokens == len(unary.logprobs) > 0
    assert all(t.logprob <= 0 for t in unary.logprobs)
    chunks = list(stub.GenerateStream(greedy(PROMPTS[1]), timeout=30))
    assert chunks[-1].is_final and not any(c.is_final for c in chunks[:-1])
    assert "".join(c.text for c in chunks) == expected
    assert chunks[-1].usage.completion_tokens == unary.usage.completion_tokens


def test_eight_concurrent_streams_equal_single_requests(stub):
    singles = [stub.Generate(greedy(p), timeout=30).text for p in PROMPTS]

    def streamed(prompt: str) -> str:
        return "".join(c.text for c in stub.GenerateStream(greedy(prompt), timeout=60))

    with ThreadPoolExecutor(8) as pool:
        together = list(pool.map(streamed, PROMPTS))
    assert together == singles


def test_label_choice_scoring(stub):
    reply = stub.Generate(generator_pb2.GenerateRequest(prompt="Gold prices", choices=[" up", " down"], max_tokens=1), timeout=30)
    scores = {c.choice: c.logprob for c in reply.choice_logprobs}
    assert set(scores) == {" up", " down"} and reply.text == max(scores, key=scores.get)
    assert reply.finish_reason == generator_pb2.FINISH_REASON_CHOICE
    constrained = stub.Generate(
        generator_pb2.GenerateRequest(prompt="Gold prices", choices=[" up", " down"], max_tokens=1, constrained_choices=True),
        timeout=30,
    )
    # Renormalised over the choices at each position: the two scores are log-probabilities of one distribution.
    assert math.isclose(sum(math.exp(c.logprob) for c in constrained.choice_logprobs), 1.0, rel_tol=1e-4)
    assert constrained.text == reply.text


def test_cancel_mid_stream_frees_the_slot(stub, edge):
    engine = edge[1].engine
    call = stub.GenerateStream(greedy(PROMPTS[0], max_tokens=120), timeout=60)
    next(call)
    assert engine.stats().running == 1
    call.cancel()
    deadline = time.monotonic() + 5
    while engine.stats().running and time.monotonic() < deadline:
        time.sleep(0.01)
    assert engine.stats().running == 0


@pytest.mark.parametrize(
    ("request_", "hint"),
    [
        (generator_pb2.GenerateRequest(prompt="", max_tokens=4), "empty"),
        (generator_pb2.GenerateRequest(prompt="Gold " * 5000, max_tokens=4), "context"),
        (generator_pb2.GenerateRequest(prompt="Gold", max_tokens=0), "max_tokens"),
        (generator_pb2.GenerateRequest(prompt="Gold", max_tokens=4, temperature=1e6), "temperature"),
    ],
    ids=["empty", "too-long", "max-tokens", "temperature"],
)
def test_bad_input_is_invalid_argument_and_the_server_keeps_serving(stub, request_, hint):
    with pytest.raises(grpc.RpcError) as err:
        stub.Generate(request_, timeout=30)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert hint in err.value.details().lower()
    assert stub.Generate(greedy("Gold", 2), timeout=30).is_final


def test_invalid_utf8_is_invalid_argument(edge):
    with grpc.insecure_channel(f"127.0.0.1:{edge[0].port}") as channel:
        raw = channel.unary_unary("/tierlm.v1.Generator/Generate")
        with pytest.raises(grpc.RpcError) as err:
            raw(b"\x1a\x02\xc3\x28\x28\x04", timeout=10)  # prompt = b"\xc3\x28": not UTF-8
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_overload_is_resource_exhausted_with_a_retry_hint(loop, llama_dir):
    server, generator = _start(loop, llama_dir, max_batch=1, max_queue=1)
    try:
        with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            stub = generator_pb2_grpc.GeneratorStub(channel)
            outcomes: list = []

            def one(_):
                try:
                    stub.Generate(greedy(PROMPTS[1], 64), timeout=60)
                    outcomes.append("ok")
                except grpc.RpcError as exc:
                    outcomes.append((exc.code(), dict(exc.trailing_metadata() or ())))

            with ThreadPoolExecutor(6) as pool:
                list(pool.map(one, range(6)))
        rejected = [o for o in outcomes if o != "ok"]
        assert rejected and "ok" in outcomes
        assert all(code == grpc.StatusCode.RESOURCE_EXHAUSTED and float(meta["retry-after-s"]) > 0 for code, meta in rejected)
    finally:
        loop.run(server.stop(grace_s=0))
        generator.engine.close(drain=False)


def test_sigterm_drains_in_flight_streams(llama_dir):
    process = subprocess.Popen(
        [sys.executable, "-m", "tierlm.app.cli", "edge", "serve", "--model", str(llama_dir), "--port", "0", "--threads", "1",
         "--no-auth"],
        stdout=subprocess.PIPE, text=True,
    )
    try:
        port = int(process.stdout.readline().split()[1])
        received: list[generator_pb2.GenerateResponse] = []
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = generator_pb2_grpc.GeneratorStub(channel)
            stream = stub.GenerateStream(greedy(PROMPTS[3], 100, temperature=0.8, seed=7), timeout=60)
            received.append(next(stream))
            process.send_signal(signal.SIGTERM)
            signalled_at = len(received)
            received.extend(stream)
        assert received[-1].is_final, "the in-flight stream must finish after SIGTERM"
        assert received[-1].usage.completion_tokens > signalled_at
        assert process.wait(timeout=60) == 0
    finally:
        process.kill()
        process.wait()
