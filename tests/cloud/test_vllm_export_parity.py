"""An exported compressed checkpoint in vLLM's CPU build against our runtime on the same checkpoint.

`tierlm export vllm` writes the artifact's packed int4 tensors as a compressed-tensors W4A16
checkpoint; vLLM runs it with its CPU int4 kernel, our edge engine with ours (onnxruntime
`MatMulNBits`, float activations). Greedy, 20 prompts, the first 16 tokens compared.

Documented numeric difference: vLLM's CPU int4 kernel has no float32 path (`cpu_gemm_wna16`
takes float16/bfloat16) and its bfloat16 path needs AMX, which this kind of machine advertises
but does not permit (the worker dies with SIGILL), so vLLM runs float16 and our runtime
float32. Near-ties can then flip a greedy choice: every prompt must match, or diverge only
where our runtime's top two tokens are within `TIE_NATS` of each other.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from tests.support.models import cached_artifact
from tests.support.skip_check import NEEDS_AVX512, has_avx512
from tierlm.edge.requests import GenerationRequest

pytest.importorskip("vllm", reason="needs vLLM (requirements/cloud-cpu.txt)")
pytestmark = [
    pytest.mark.slow,
    # vLLM's CPU wheel ships an AVX-512 and an AVX2 build of its kernels; only the first has the
    # int4 kernel (the AVX2 one fails with "no attribute 'cpu_gemm_wna16'").
    pytest.mark.skipif(not has_avx512(), reason=f"{NEEDS_AVX512}: vLLM's CPU int4 kernel (cpu_gemm_wna16) is only in its AVX-512 build"),
]

NEW_TOKENS = 16
# Largest top-1/top-2 log-prob gap (ours, float32) at which a float16 engine may pick the other token.
TIE_NATS = 0.1
SUBJECTS = ["gold", "oil", "the dollar", "tech shares", "bond yields", "copper", "wheat", "the euro", "bitcoin", "rates"]
PROMPTS = [f"Headline: {s} prices {verb} today\nSummary:" for s in SUBJECTS for verb in ("rise", "fall")]


@pytest.fixture(scope="session")
def smollm2_rtn_w4g64() -> Path:
    """`tierlm compress --model smollm2-135m --recipe examples/recipes/rtn-w4g64.yaml`, cached."""
    return cached_artifact("smollm2-135m", "rtn-w4g64")


@pytest.fixture(scope="module")
def runner():
    with asyncio.Runner() as loop_runner:  # vLLM's output handler lives on the loop it started on
        yield loop_runner


def compare(exported: Path, runner: asyncio.Runner, max_model_len: int) -> list[tuple[str, tuple, tuple]]:
    """(prompt, vLLM tokens, our tokens) for every prompt, greedy, on the exported checkpoint."""
    from tierlm.cloud.engines.vllm_engine import VLLMTextEngine
    from tierlm.edge.engine import DecoderEngine

    vllm_engine = VLLMTextEngine(exported, {"dtype": "float16", "max_model_len": max_model_len})
    ours = DecoderEngine.from_pretrained(exported, max_batch=4, max_queue=32, threads=1)
    try:
        out = []
        for prompt in PROMPTS:
            request = GenerationRequest(prompt=prompt, max_tokens=NEW_TOKENS, ignore_eos=True)
            got = runner.run(vllm_engine.generate(request))
            want = runner.run(ours.generate(request))
            out.append((prompt, got.token_ids, want.token_ids))
        return out
    finally:
        ours.close()
        runner.run(vllm_engine.aclose())


def check_parity(exported: Path, results: list[tuple[str, tuple, tuple]]) -> float:
    """Assert every divergence is a near-tie for our runtime; return the exact match rate."""
    import torch

    from tierlm.edge.decoder import CausalLM, load_model
    from transformers import AutoTokenizer

    assert all(len(got) == NEW_TOKENS == len(want) for _, got, want in results)
    diverged = [(p, got, want) for p, got, want in results if got != want]
    if diverged:
        model = CausalLM(load_model(exported))
        tokenizer = AutoTokenizer.from_pretrained(str(exported))
        for prompt, got, want in diverged:
            first = next(i for i, (a, b) in enumerate(zip(got, want)) if a != b)
            ids = tokenizer(prompt, return_tensors="pt").input_ids
            prefix = torch.cat([ids, torch.tensor([want[:first]], dtype=torch.long)], dim=1)
            with torch.inference_mode():
                logprobs = torch.log_softmax(model(prefix)[0, -1].float(), -1)
            gap = float(logprobs[want[first]] - logprobs[got[first]])
            assert 0 <= gap < TIE_NATS, f"{prompt!r}: token {first} differs by {gap:.3f} nats, not a near-tie"
            print(f"{prompt!r}: diverges at token {first}, a near-tie ({gap:.4f} nats in float32)")
    return 1 - len(diverged) / len(results)


def test_tiny_gptq_llama_matches_our_runtime(tmp_path, runner):
    from tierlm.edge.tiny import CORPUS, build_model
    from tierlm.kernels.artifact import save_artifact
    from tierlm.edge.compress import calibration_tokens
    from tierlm.kernels.pipeline import compress_model
    from tierlm.kernels.recipe import parse_recipe
    from tierlm.edge.compress import export_artifact_for_vllm
    from tierlm.edge.decoder import load_model
    from transformers import AutoTokenizer

    # Hidden 128: vLLM's CPU attention takes head size 32, its int4 kernel widths in multiples of 32.
    build_model(tmp_path / "src", "llama", hidden_size=128)
    recipe = parse_recipe(
        "name: t-gptq\ncalibration: {sequences: 4, seq_len: 32, batch_size: 4, max_samples: 64}\n"
        "rules:\n  - match: 'layers.*'\n    method: gptq\n    options: {bits: 4, group_size: 32}\n"
        "embedding: {method: rtn, options: {bits: 4, group_size: 32}}\n"
    )
    model = load_model(tmp_path / "src")
    tokens = calibration_tokens(AutoTokenizer.from_pretrained(str(tmp_path / "src")), " ".join(CORPUS), 4, 32)
    compress_model(model, recipe, tokens)
    save_artifact(model, tmp_path / "artifact", tmp_path / "src")
    export_artifact_for_vllm(tmp_path / "artifact", tmp_path / "vllm")

    results = compare(tmp_path / "vllm", runner, max_model_len=256)
    assert check_parity(tmp_path / "vllm", results) >= 0.9


def test_smollm2_rtn_w4_matches_our_runtime(tmp_path, runner, smollm2_rtn_w4g64):
    """SmolLM2 135M, int4 g64: Gemma 3's quantized path cannot run in vLLM's CPU build here.

    vLLM refuses float16 for Gemma 3 (numerical instability), its int4/int8 CPU kernels have no
    float32 path, and bfloat16 needs AMX (SIGILL on this machine).
    """
    from tierlm.edge.compress import export_artifact_for_vllm

    export_artifact_for_vllm(smollm2_rtn_w4g64, tmp_path / "vllm")
    results = compare(tmp_path / "vllm", runner, max_model_len=512)
    rate = check_parity(tmp_path / "vllm", results)
    print(f"SmolLM2 135M rtn-w4g64: {rate:.0%} of {len(results)} prompts match exactly over {NEW_TOKENS} tokens")
    assert rate >= 0.8
