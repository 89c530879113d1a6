"""An engine on two threads runs a compressed model's onnxruntime graphs on one shared pool and
torch on the engine thread alone (tierlm.edge.threads), with the tokens of a one-thread engine.

The shared pool is process-wide and cannot be resized, so the engines run in a fresh
interpreter: the rest of the suite keeps its pools per session.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tierlm.kernels.artifact import save_artifact
from tierlm.kernels.ops.ort_nbits import ort_available
from tests.kernels.test_pipeline import compressed, recipe_text

pytestmark = pytest.mark.skipif(not ort_available(), reason="needs onnxruntime")

ROOT = Path(__file__).resolve().parents[2]

ENGINES = """
import asyncio, json, sys
import torch
from tierlm.edge import DecoderEngine, GenerationRequest
from tierlm.edge.threads import runs_on_shared_pool, torch_threads
from tierlm.kernels.ops.ort_nbits import share_pool

artifact, dense = sys.argv[1], sys.argv[2]
request = GenerationRequest(prompt="The json module", max_tokens=12, ignore_eos=True)

def run(path, threads):
    engine = DecoderEngine.from_pretrained(path, max_batch=2, max_seq_len=64, threads=threads)
    try:
        completion = asyncio.run(engine.generate(request))
        return engine.model, completion.token_ids
    finally:
        engine.close()

one_model, one_tokens = run(artifact, 1)  # before any shared pool: sessions of its own
two_model, two_tokens = run(artifact, 2)
dense_model, _ = run(dense, 2)
try:
    share_pool(3)
    resized = None
except RuntimeError as e:
    resized = str(e)
print(json.dumps({
    "one": {"shared": runs_on_shared_pool(one_model), "torch": torch_threads(one_model, 1), "tokens": one_tokens},
    "two": {"shared": runs_on_shared_pool(two_model), "torch": torch_threads(two_model, 2), "tokens": two_tokens},
    "dense": {"shared": runs_on_shared_pool(dense_model), "torch": torch_threads(dense_model, 2)},
    "resized": resized,
}))
"""


def test_two_threads_share_one_pool_and_decode_the_same_tokens(gemma_dir: Path, tmp_path: Path) -> None:
    artifact = tmp_path / "w8a8"
    save_artifact(compressed(gemma_dir, recipe_text("int8", "{}", embedding="{method: int8}")), artifact, gemma_dir)
    done = subprocess.run(
        [sys.executable, "-c", ENGINES, str(artifact), str(gemma_dir)],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["one"]["shared"] is False and result["one"]["torch"] == 1
    assert result["two"]["shared"] is True and result["two"]["torch"] == 1  # torch yields the cores to the pool
    assert result["dense"]["shared"] is False and result["dense"]["torch"] == 2  # fp32 linears run in torch
    assert len(result["two"]["tokens"]) == 12
    # Each output is computed alike whichever worker takes its columns: the same greedy tokens.
    assert result["two"]["tokens"] == result["one"]["tokens"]
    assert "cannot be resized" in result["resized"]
