"""Which compressed exports vLLM's CPU build runs here, and in which activation dtype.

    python bench/vllm_exports.py [--model gemma-3-270m --model smollm2-135m] [--quick] [--threads 2]

For each model: the prepared fp32 HF folder and the compressed-tensors exports of two artifacts
(``tierlm export vllm``): ``w4a16`` from ``examples/recipes/rtn-w4g64.yaml`` (int4 groups of
64, vLLM's ``CPUWNA16LinearKernel``) and ``w8a8`` from ``examples/recipes/w8a8-plain.yaml``
(int8 weights and per-token activations, vLLM's oneDNN int8 kernel). Artifacts and exports are
cached under ``~/.cache/tierlm/{artifacts,vllm}`` and reused when their recipe is unchanged.

Each (checkpoint, dtype) starts vLLM (``VLLMTextEngine``) in a fresh process, so a refusal or a
crash (an illegal instruction on a CPU that advertises AMX but does not permit it) is recorded,
not fatal: the row says whether it ran and, if not, the engine's own last words. When it runs:
start-up seconds, greedy tokens of a few prompts compared with our runtime on the same
checkpoint (``tokens_match``), and batch-1 decode tokens/s. ``--quick``: one prompt, and only
the dtypes each scheme's kernel documents. Writes bench/results/vllm_exports.json, whose
``conclusion`` names, per model, the compressed export the cloud tier should serve (fastest
that runs and agrees with our runtime) or fp32 with the reasons.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import subprocess
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # `bench.*` imports when run as a script

RECIPES = {"w4a16": ROOT / "examples/recipes/rtn-w4g64.yaml", "w8a8": ROOT / "examples/recipes/w8a8-plain.yaml"}
# The activation dtypes tried per checkpoint kind (float16 is what the int4 kernel documents;
# bfloat16 needs AMX on Intel CPUs or AVX512-BF16 elsewhere; float32 is the reference).
DTYPES = {"fp32": ("float32", "bfloat16"), "w4a16": ("float16", "bfloat16", "float32"), "w8a8": ("float32", "bfloat16")}
QUICK_DTYPES = {"fp32": ("float32",), "w4a16": ("float16", "bfloat16"), "w8a8": ("float32",)}
PROMPTS = [
    "Gold prices fell sharply after the central bank raised rates, and traders said",
    "Headline: oil futures rise on supply worries\nSummary:",
    "The quick brown fox",
    "Shares of tech companies climbed to a record high on Monday as",
]
NEW_TOKENS = 16
DECODE_TOKENS = 64
START_TIMEOUT_S = 1200


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def exported_checkpoint(model: str, kind: str, folder: Path, threads: int) -> Path:
    """The compressed-tensors export of `kind`'s artifact (built and cached as needed)."""
    from bench.compression import artifact_for
    from tierlm.edge import catalog
    from tierlm.edge.compress import export_artifact_for_vllm
    from tierlm.kernels.artifact import MANIFEST
    from tierlm.kernels.vllm_export import is_exported

    artifact, _ = artifact_for(folder, RECIPES[kind], catalog.cache_root() / "artifacts" / folder.name, True, threads)
    out = catalog.cache_root() / "vllm" / f"{folder.name}-{artifact.name}"
    # The export is current when it was written from this very artifact (same manifest).
    stamp, current = out / f"source-{MANIFEST}", (artifact / MANIFEST).read_text()
    if not (is_exported(out) and stamp.is_file() and stamp.read_text() == current):
        log(f"{model} {kind}: exporting {artifact} -> {out}")
        export_artifact_for_vllm(artifact, out)
        stamp.write_text(current)
    return out


def try_engine(path: str, dtype: str, prompts: list[str], threads: int) -> dict:
    """Start vLLM on `path` in `dtype`, run the prompts greedily and time a decode (own process)."""
    import asyncio

    from tierlm.cloud.engines.vllm_engine import VLLMTextEngine
    from tierlm.edge.requests import GenerationRequest

    async def run() -> dict:
        started = time.perf_counter()
        engine = VLLMTextEngine(path, {"dtype": dtype, "max_model_len": 512})
        startup_s = time.perf_counter() - started
        try:
            tokens = []
            for prompt in prompts:
                done = await engine.generate(GenerationRequest(prompt=prompt, max_tokens=NEW_TOKENS, ignore_eos=True))
                tokens.append(list(done.token_ids))
            begin = time.perf_counter()
            done = await engine.generate(GenerationRequest(prompt=prompts[0], max_tokens=DECODE_TOKENS, ignore_eos=True))
            elapsed = time.perf_counter() - begin - done.ttft_s
            return {
                "startup_s": round(startup_s, 1),
                "tokens": tokens,
                "decode_tok_s": round((done.completion_tokens - 1) / elapsed, 2),
            }
        finally:
            await engine.aclose()

    return asyncio.run(run())


def our_tokens(path: str, prompts: list[str], threads: int) -> list[list[int]]:
    """Greedy tokens of our runtime on the same checkpoint (float32)."""
    import asyncio

    from tierlm.edge import DecoderEngine, GenerationRequest

    engine = DecoderEngine.from_pretrained(path, max_batch=1, threads=threads)
    try:
        return [
            list(asyncio.run(engine.generate(GenerationRequest(prompt=p, max_tokens=NEW_TOKENS, ignore_eos=True))).token_ids)
            for p in prompts
        ]
    finally:
        engine.close()


def in_fresh_process(fn, *args):
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        return pool.submit(fn, *args).result()


def vllm_in_child(path: Path, dtype: str, prompts: list[str], threads: int) -> dict:
    """`try_engine` in a child interpreter whose output we keep: when vLLM refuses or dies
    (an illegal instruction kills the process outright), its log holds the reason."""
    command = [sys.executable, __file__, "--child", str(path), dtype, str(threads), *prompts]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=START_TIMEOUT_S, cwd=ROOT)
    except subprocess.TimeoutExpired:
        return {"runs": False, "error": f"no result within {START_TIMEOUT_S} s"}
    if done.returncode == 0 and done.stdout.strip():
        return {"runs": True, **json.loads(done.stdout.strip().splitlines()[-1])}
    return {"runs": False, "error": reason(done.stderr, done.returncode)}


def reason(log_text: str, returncode: int) -> str:
    """The engine's own explanation: the last error line of its log (vLLM re-raises a generic
    "Engine core initialization failed" after logging the cause)."""
    lines = [line.strip() for line in log_text.splitlines() if line.strip()]
    errors = [line for line in lines if "Error" in line or "error" in line or "Illegal instruction" in line]
    generic = ("Engine core initialization failed", "See root cause above", "Traceback")
    specific = [line for line in errors if not any(g in line for g in generic)]
    picked = (specific or errors or lines or [f"exit code {returncode}"])[-1]
    return f"{picked[-400:]} (exit code {returncode})"


def conclusion(rows: list[dict], model: str) -> str:
    ran = [r for r in rows if r["model"] == model and r["runs"] and r["checkpoint"] != "fp32" and r["tokens_match_all"]]
    refused = [f"{r['checkpoint']} {r['dtype']}: {r['error']}" for r in rows if r["model"] == model and not r["runs"]]
    if ran:
        best = max(ran, key=lambda r: r["decode_tok_s"])
        return f"serve {best['checkpoint']} in {best['dtype']} ({best['decode_tok_s']} tok/s); did not run: {refused or 'none'}"
    return f"serve fp32: no compressed export ran and agreed with our runtime; did not run: {refused}"


def main() -> None:
    if sys.argv[1:2] == ["--child"]:  # vllm_in_child's interpreter
        path, dtype, threads, *prompts = sys.argv[2:]
        print(json.dumps(try_engine(path, dtype, prompts, int(threads))))
        return
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", action="append", help="registered model (repeatable); default: both")
    parser.add_argument("--quick", action="store_true", help="one prompt, the documented dtypes only")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()

    from tierlm.edge import catalog
    from tierlm.results import write_results

    models = args.model or ["gemma-3-270m", "smollm2-135m"]
    prompts = PROMPTS[:1] if args.quick else PROMPTS
    dtypes = QUICK_DTYPES if args.quick else DTYPES
    load_start = os.getloadavg()
    rows: list[dict] = []
    for model in models:
        folder = catalog.prepare(model)
        checkpoints = {"fp32": folder}
        for kind in RECIPES:
            checkpoints[kind] = exported_checkpoint(model, kind, folder, args.threads)
        for kind, path in checkpoints.items():
            reference = in_fresh_process(our_tokens, str(path), prompts, args.threads)
            for dtype in dtypes[kind]:
                log(f"{model} {kind} {dtype}: starting vLLM")
                row = {"name": f"{kind}-{dtype}", "model": model, "checkpoint": kind, "dtype": dtype, "path": str(path)}
                row.update(vllm_in_child(path, dtype, prompts, args.threads))
                if row["runs"]:
                    matches = sum(a == b for a, b in zip(row.pop("tokens"), reference))
                    row.update(tokens_match=f"{matches}/{len(prompts)}", tokens_match_all=matches == len(prompts))
                log(str(row))
                rows.append(row)
    path = write_results(
        "vllm_exports",
        rows,
        models=models,
        threads=args.threads,
        conclusion={m: conclusion(rows, m) for m in models},
        load_average={"start": list(load_start), "end": list(os.getloadavg())},
    )
    for m in models:
        print(f"{m}: {conclusion(rows, m)}")
    log(f"wrote {path}")


if __name__ == "__main__":
    main()
