"""Compression table: artifact bytes, held-out perplexity and decode speed per recipe, one run.

    python bench/compression.py [--model gemma-3-270m] [--recipe examples/recipes/X.yaml ...]
                                [--quick] [--threads 2] [--reuse]

Rows: ``fp32`` (the prepared HF folder in our edge decoder), ``llama.cpp-q4_k_m`` (the
model's own GGUF through ``llama-cpp-python``, the optional ``bench`` extra) when that package
is importable, and one row per recipe (named by the recipe's ``name``; every
``examples/recipes/*.yaml`` by default: quantization, pruning, low-rank and the composite). Every model is scored the same way:
sliding-window perplexity (context 512, stride 256 by default) on ``data/text/python-docs/eval`` through
our decoder (llama.cpp through its own evaluator on the same token ids), and decode tokens/s
at batch 1 through the edge ``Engine`` (llama.cpp: its ``eval`` + greedy token loop), torch
threads pinned, one model at a time after all perplexities are known (``--ppl-jobs N``
computes those in N worker processes: they are deterministic, so this changes no number).
``--quick`` scores only the first 8192 eval tokens, ``--max-tokens`` any other count. Artifacts are written
under ``~/.cache/tierlm/artifacts/<model>/<recipe>``; ``--reuse`` keeps one whose manifest
records the same recipe. Writes bench/results/compression.json (DESIGN §7) after every row
(``complete`` says whether the run finished), with the machine's load average at start and end.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # `bench.*` imports when run as a script
EVAL_TEXT = ROOT / "data" / "text" / "python-docs" / "eval"
CALIB_TEXT = ROOT / "data" / "text" / "python-docs" / "calib"
RECIPES = ROOT / "examples" / "recipes"
QUICK_TOKENS = 8192


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def perplexity_of(model_dir: str, context: int, stride: int, max_tokens: int | None, threads: int) -> dict:
    """Held-out perplexity of an HF folder or artifact in our decoder (runs in a worker process)."""
    import torch
    from transformers import AutoTokenizer

    from tierlm.edge import perplexity
    from tierlm.edge.decoder import CausalLM, load_model

    torch.set_num_threads(threads)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    result = perplexity.evaluate(
        CausalLM(load_model(Path(model_dir))),
        tokenizer,
        perplexity.read_text(EVAL_TEXT),
        context=context,
        stride=stride,
        max_tokens=max_tokens,
    )
    return {"ppl": round(result.ppl, 4), "eval_tokens": result.tokens, "ppl_seconds": round(result.seconds, 1)}


def decode_speed(model_dir: Path, args: argparse.Namespace) -> float:
    """Batch-1 decode tokens/s through the edge ``Engine`` on ``args.threads`` threads.

    Each model is timed in a fresh process: this one has loaded models and run torch on its
    main thread, whose idle OpenMP team would slow the decode thread (see
    ``tierlm.edge.engine.on_passing_thread``), and no earlier row's state can leak into a timing.
    """
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        return pool.submit(_decode_speed_here, str(model_dir), args.decode_tokens, args.threads).result()


def _decode_speed_here(model_dir: str, decode_tokens: int, threads: int) -> float:
    from bench.edge import measure_engine
    from tierlm.edge import DecoderEngine

    engine = DecoderEngine.from_pretrained(model_dir, max_batch=1, max_seq_len=decode_tokens + 64, threads=threads)
    try:
        return measure_engine(engine, 1, decode_tokens)["decode_tok_s"]
    finally:
        engine.close()


def perplexities(targets: dict[str, Path], args: argparse.Namespace, max_tokens: int | None) -> dict[str, dict]:
    """Perplexity of every target; ``--ppl-jobs`` > 1 spreads them over worker processes.

    Perplexity is deterministic, so computing it in parallel changes no number; decode speed,
    which is timed, is measured afterwards one model at a time.
    """
    work = {name: (str(path), args.context, args.stride, max_tokens, 1 if args.ppl_jobs > 1 else args.threads) for name, path in targets.items()}
    if args.ppl_jobs == 1:
        results = {}
        for name, call in work.items():
            log(f"{name}: perplexity")
            results[name] = perplexity_of(*call)
        return results
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(args.ppl_jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
        futures = {name: pool.submit(perplexity_of, *call) for name, call in work.items()}
        results = {}
        for name, future in futures.items():
            results[name] = future.result()
            log(f"{name}: {results[name]}")
        return results


def artifact_for(folder: Path, recipe_path: Path, out_root: Path, reuse: bool, threads: int) -> tuple[Path, dict]:
    """Compress ``folder`` by the recipe (or reuse a matching artifact); (path, manifest)."""
    from tierlm.kernels.artifact import is_artifact, read_manifest
    from tierlm.edge.compress import compress
    from tierlm.kernels.recipe import load_recipe
    from tierlm.edge.perplexity import read_text

    recipe = load_recipe(recipe_path)
    out = out_root / recipe.name
    # Compare as recipes, not as dumps: a field added to the schema later (with its default)
    # does not make an older artifact of the same recipe stale.
    if reuse and is_artifact(out) and type(recipe).model_validate(read_manifest(out).get("recipe") or {}) == recipe:
        log(f"{recipe.name}: reusing {out}")
        return out, read_manifest(out)
    log(f"{recipe.name}: compressing")
    result = compress(folder, recipe, read_text(CALIB_TEXT), out, lambda d, t, m: log(f"{recipe.name}: {d}/{t} {m}"))
    log(f"{recipe.name}: compressed in {result.seconds:.0f} s")
    return out, result.manifest


def llama_cpp_row(gguf: Path, ids: list[int], bos: int | None, args: argparse.Namespace) -> dict:
    """Perplexity (same windows, same token ids) and decode speed of the GGUF in llama.cpp."""
    import math

    import numpy as np
    from llama_cpp import Llama

    from bench.edge import llama_cpp_stream, summarize
    from tierlm.edge.perplexity import windows

    context, stride, decode_tokens = args.context, args.stride, args.decode_tokens
    llm = Llama(str(gguf), n_ctx=context, n_threads=args.threads, n_batch=context, logits_all=True, verbose=False)
    prefix = [] if bos is None else [bos]
    nll, scored = 0.0, 0
    start = time.perf_counter()
    for w in windows(len(ids), context - len(prefix), stride, first_scored=0 if prefix else 1):
        chunk = prefix + ids[w.begin : w.end]
        llm.reset()
        llm.eval(chunk)
        logits = np.asarray(llm.scores[: len(chunk)], dtype=np.float64)
        offset = len(prefix) - w.begin  # chunk index of text token i is i + offset
        for i in range(w.score_from, w.end):
            row = logits[i + offset - 1]
            top = row.max()
            nll += top + math.log(np.exp(row - top).sum()) - row[ids[i]]
        scored += w.end - w.score_from
    ppl_seconds = time.perf_counter() - start
    speed = summarize([llama_cpp_stream(llm, prefix + ids[:16], decode_tokens)])
    return {
        "ppl": round(math.exp(nll / scored), 4),
        "eval_tokens": scored,
        "ppl_seconds": round(ppl_seconds, 1),
        "decode_tok_s": speed["decode_tok_s"],
        "bytes": gguf.stat().st_size,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="gemma-3-270m", help="registered model name (tierlm model list) or HF folder")
    parser.add_argument("--recipe", action="append", type=Path, help="recipe YAML (repeatable); default: all examples")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--quick", action="store_true", help=f"score only the first {QUICK_TOKENS} eval tokens")
    parser.add_argument("--decode-tokens", type=int, default=64)
    parser.add_argument("--context", type=int, default=512, help="perplexity window")
    parser.add_argument("--stride", type=int, help="tokens between window starts (default: half the context)")
    parser.add_argument("--reuse", action="store_true", help="reuse artifacts made by the same recipe")
    parser.add_argument("--max-tokens", type=int, help=f"score only the first N eval tokens (--quick: {QUICK_TOKENS})")
    parser.add_argument("--ppl-jobs", type=int, default=1, help="worker processes (1 thread each) for the perplexities")
    args = parser.parse_args()
    args.stride = args.stride or args.context // 2

    import torch
    from transformers import AutoTokenizer

    from tierlm.edge import catalog, perplexity
    from tierlm.edge.decoder import load_model
    from tierlm.kernels.artifact import artifact_state, byte_breakdown

    torch.set_num_threads(args.threads)
    registered = args.model in catalog.MODELS
    folder = catalog.prepare(args.model) if registered else Path(args.model)
    tokenizer = AutoTokenizer.from_pretrained(str(folder))
    text = perplexity.read_text(EVAL_TEXT)
    max_tokens = args.max_tokens or (QUICK_TOKENS if args.quick else None)
    out_root = catalog.cache_root() / "artifacts" / folder.name

    from tierlm.results import write_results

    rows: list[dict] = []
    notes: dict[str, str] = {}
    load_start = os.getloadavg()

    def save(complete: bool) -> Path:
        # Written after every row, so a run cut short still leaves what it measured.
        return write_results(
            "compression",
            rows,
            model=args.model,
            threads=args.threads,
            eval_text="data/text/python-docs/eval",
            eval={"context": args.context, "stride": args.stride, "max_tokens": max_tokens},
            load_average={"start": list(load_start), "end": list(os.getloadavg())},
            complete=complete,
            notes=notes,
        )

    # Compress (or reuse) first, then perplexities (parallel if asked), then the timed part,
    # one model after another.
    sizes = {"fp32": byte_breakdown(artifact_state(load_model(folder))[0])}
    targets = {"fp32": folder}
    compress_seconds = {}
    for recipe_path in args.recipe or sorted(RECIPES.glob("*.yaml")):
        path, manifest = artifact_for(folder, recipe_path, out_root, args.reuse, args.threads)
        targets[path.name], sizes[path.name] = path, manifest["bytes"]
        compress_seconds[path.name] = manifest.get("compress_seconds")
    scores = perplexities(targets, args, max_tokens)
    torch.set_num_threads(args.threads)

    def measured(name: str) -> None:
        log(f"{name}: decoding")
        row = {"name": name, **_bytes(sizes[name]), **scores[name], "decode_tok_s": decode_speed(targets[name], args)}
        if name in compress_seconds:
            row["compress_seconds"] = compress_seconds[name]
        rows.append(row)
        log(json.dumps(row))
        save(False)

    measured("fp32")
    try:
        import llama_cpp  # noqa: F401
    except ImportError:
        notes["llama.cpp-q4_k_m"] = "omitted: llama-cpp-python is not installed here (optional bench extra)"
    else:
        if not registered:
            raise SystemExit("the llama.cpp row needs a registered model (its GGUF); uninstall llama-cpp-python or name one")
        log("llama.cpp-q4_k_m: scoring")
        ids, bos = perplexity.encode(tokenizer, text, max_tokens)
        gguf = catalog.gguf_path(args.model)
        rows.append({"name": "llama.cpp-q4_k_m", **llama_cpp_row(gguf, ids, bos, args)})
        log(json.dumps(rows[-1]))
        save(False)
    for name in targets:
        if name != "fp32":
            measured(name)

    path = save(True)
    print(table(rows, notes))
    log(f"wrote {path}")


def _bytes(size: dict) -> dict:
    return {"bytes": size["total"], "bytes_blocks": size["blocks"], "bytes_embeddings": size["embeddings"]}


def table(rows: list[dict], notes: dict[str, str]) -> str:
    """The rows as a Markdown table (for the README), fp32-relative columns included."""
    base = rows[0]
    lines = [
        "| method | blocks MB | embeddings MB | total MB | ppl | Δppl vs fp32 | decode tok/s |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        mb = lambda k: f"{r[k] / 1e6:.1f}" if k in r else "–"  # noqa: E731
        lines.append(
            f"| {r['name']} | {mb('bytes_blocks')} | {mb('bytes_embeddings')} | {mb('bytes')} | {r['ppl']:.3f} "
            f"| {100 * (r['ppl'] / base['ppl'] - 1):+.2f}% | {r['decode_tok_s']:.1f} |"
        )
    lines += [f"\n{name}: {note}" for name, note in notes.items()]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
