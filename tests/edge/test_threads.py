"""In a serving process, an engine on two threads runs a compressed model's onnxruntime graphs
on one shared pool and torch on the engine thread alone (tierlm.edge.threads), with the tokens
of an engine whose graphs have pools of their own; loading alone never shares the pool.

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
from tierlm.edge import DecoderEngine, GenerationRequest
from tierlm.edge.threads import runs_on_shared_pool, share_pool_for_serving, torch_threads
from tierlm.kernels.ops.ort_nbits import share_pool

artifact, dense, dense_table = sys.argv[1], sys.argv[2], sys.argv[3]
request = GenerationRequest(prompt="The json module", max_tokens=12, ignore_eos=True)

def run(path):
    engine = DecoderEngine.from_pretrained(path, max_batch=2, max_seq_len=64, threads=2)
    try:
        completion = asyncio.run(engine.generate(request))
        return engine.model, completion.token_ids
    finally:
        engine.close()

own_model, own_tokens = run(artifact)  # a library caller: a pool per session
share_pool_for_serving(2)  # as `tierlm edge serve` does before loading
shared_model, shared_tokens = run(artifact)
dense_model, _ = run(dense)
dense_table_model, _ = run(dense_table)
try:
    share_pool(3)
    resized = None
except RuntimeError as e:
    resized = str(e)
print(json.dumps({
    "own": {"shared": runs_on_shared_pool(own_model), "torch": torch_threads(own_model, 2), "tokens": own_tokens},
    "shared": {"shared": runs_on_shared_pool(shared_model), "torch": torch_threads(shared_model, 2), "tokens": shared_tokens},
    "dense": {"shared": runs_on_shared_pool(dense_model), "torch": torch_threads(dense_model, 2)},
    "dense_table": {"shared": runs_on_shared_pool(dense_table_model), "torch": torch_threads(dense_table_model, 2)},
    "resized": resized,
}))
"""


def test_a_serving_process_shares_one_pool_and_decodes_the_same_tokens(gemma_dir: Path, tmp_path: Path) -> None:
    artifact = tmp_path / "w8a8"
    save_artifact(compressed(gemma_dir, recipe_text("int8", "{}", embedding="{method: int8}")), artifact, gemma_dir)
    # int8 blocks, float table: after fusion its only onnxruntime graphs are the layers' tails.
    dense_table = tmp_path / "w8a8-dense-table"
    save_artifact(compressed(gemma_dir, recipe_text("int8", "{}", embedding="null")), dense_table, gemma_dir)
    done = subprocess.run(
        [sys.executable, "-c", ENGINES, str(artifact), str(gemma_dir), str(dense_table)],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["own"]["shared"] is False and result["own"]["torch"] == 2  # loading alone never shares
    assert result["shared"]["shared"] is True and result["shared"]["torch"] == 1  # torch yields the cores to the pool
    assert result["dense"]["shared"] is False and result["dense"]["torch"] == 2  # fp32 linears run in torch
    assert result["dense_table"]["shared"] is True and result["dense_table"]["torch"] == 1
    assert len(result["shared"]["tokens"]) == 12
    # Each output is computed alike whichever worker takes its columns: the same greedy tokens.
    assert result["shared"]["tokens"] == result["own"]["tokens"]
    assert "cannot be resized" in result["resized"]
