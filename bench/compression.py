"""The bits-per-weight frontier: perplexity against stored bytes for our recipes and llama.cpp's
types, both offline models, one run.

    python bench/compression.py [--model gemma-3-270m --model smollm2-135m]
                                [--recipe examples/recipes/X.yaml ...] [--llama-type Q4_K_M ...]
                                [--quick] [--threads 2] [--reuse] [--ppl-jobs 1] [--no-decode]

Rows per model (each with ``model``, ``bytes``, ``bits_per_weight`` = all stored bytes of the
weights, embeddings included, × 8 / the parameter count, ``ppl``, ``ppl_vs_fp32`` and
``decode_tok_s``):

- ``fp32``: the prepared HF folder in our decoder;
- one row per recipe (named by it; every ``examples/recipes/*.yaml`` by default, minus those
  whose group sizes do not divide the model's widths, which ``notes`` lists): RTN/AWQ/GPTQ at 3
  and 4 bits and several group sizes, NF4, W8A8, pruning, low-rank, the composites, mixed
  precision by sensitivity (``mixed-*``) and the grid-aware ``grid-w4g32``;
- ``llama.cpp-<type>`` per llama.cpp type (``llama-cpp-python``, the optional ``bench``
  extra), re-quantized from the model's own GGUF by its ``llama_model_quantize`` (the source
  type itself is the shipped file); ``<type>:<table type>`` also sets the token-embedding /
  output type (``llama.cpp-q2_k-table-q4_0``), since llama.cpp otherwise keeps a tied table at
  Q8_0. Its bytes are ``llama_model_size`` (all tensors, as ours).

Scoring: sliding-window perplexity (context 512, stride 256 by default) on
``data/text/python-docs/eval``, our decoder for ours and llama.cpp's own evaluator on the same
token ids; decode tokens/s at batch 1 through the edge ``Engine`` (llama.cpp: its ``eval`` +
greedy token loop), threads pinned, every timed model in a fresh process after all perplexities
are known. ``--quick``: the first 8192 eval tokens, a core set of recipes and llama.cpp types.

Resumable: artifacts are cached under ``~/.cache/tierlm/artifacts/<model>/<recipe>`` and
llama.cpp files under ``.../llama.cpp/``; with ``--reuse`` an artifact whose manifest records
the same recipe is kept, and so is a perplexity computed before on the same file with the same
evaluation settings (``~/.cache/tierlm/bench/perplexity.json``; perplexity is deterministic).
Decode speed is always measured anew. Writes bench/results/compression.json after every row
(``complete`` says whether the run finished), with the load average at start and end, and one
plot per model, bench/results/compression-<model>.png, with the source-grid caveat under it.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # `bench.*` imports when run as a script
EVAL_TEXT = ROOT / "data" / "text" / "python-docs" / "eval"
CALIB_TEXT = ROOT / "data" / "text" / "python-docs" / "calib"
RECIPES = ROOT / "examples" / "recipes"
RESULTS = ROOT / "bench" / "results"
QUICK_TOKENS = 8192
MODELS = ("gemma-3-270m", "smollm2-135m")
LLAMA_TYPES = (
    "Q8_0", "Q6_K", "Q5_K_M", "Q4_K_M", "Q4_1", "Q4_0", "IQ4_NL", "IQ4_XS", "Q3_K_M", "IQ3_M", "Q2_K", "Q2_0",
    "Q4_0:Q4_0", "IQ4_NL:IQ4_NL", "Q3_K_M:Q4_0", "Q2_K:Q4_0", "Q2_0:Q2_0",
)  # fmt: skip
QUICK_LLAMA_TYPES = ("Q8_0", "Q4_K_M", "Q4_1", "Q4_0", "Q2_K", "Q4_0:Q4_0", "Q2_K:Q4_0")
QUICK_RECIPES = (
    "rtn-w4g64", "rtn-w3g64", "gptq-w4g64", "gptq-w3g64", "nf4", "w8a8-plain", "grid-w4g32",
    "mixed-3.5", "mixed-4.0", "composite-edge",
)  # fmt: skip
PPL_CACHE = "bench/perplexity.json"


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# ---- our models ----


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
    return in_fresh_process(_decode_speed_here, str(model_dir), args.decode_tokens, args.threads)


def _decode_speed_here(model_dir: str, decode_tokens: int, threads: int) -> float:
    from bench.edge import measure_engine
    from tierlm.edge import DecoderEngine
    from tierlm.edge.threads import share_pool_for_serving

    share_pool_for_serving(threads)  # the engine as `tierlm edge serve` runs it
    engine = DecoderEngine.from_pretrained(model_dir, max_batch=1, max_seq_len=decode_tokens + 64, threads=threads)
    try:
        return measure_engine(engine, 1, decode_tokens)["decode_tok_s"]
    finally:
        engine.close()


def in_fresh_process(fn, *args):
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        return pool.submit(fn, *args).result()


def artifact_for(folder: Path, recipe_path: Path, out_root: Path, reuse: bool, threads: int) -> tuple[Path, dict]:
    """Compress ``folder`` by the recipe (or reuse a matching artifact); (path, manifest)."""
    from tierlm.edge.compress import compress
    from tierlm.edge.perplexity import read_text
    from tierlm.kernels.artifact import is_artifact, read_manifest
    from tierlm.kernels.recipe import load_recipe

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


def misfit(recipe_path: Path, widths: set[int]) -> str | None:
    """Why the recipe cannot run on a model whose linears read ``widths`` features, or None."""
    from tierlm.kernels.recipe import load_recipe

    recipe = load_recipe(recipe_path)
    specs = [*recipe.rules, recipe.embedding, recipe.lm_head]
    if recipe.mixed_precision is not None:
        specs += [*recipe.mixed_precision.candidates, *(recipe.mixed_precision.table_candidates or [])]
    for spec in filter(None, specs):
        group = spec.options.get("group_size") or (spec.options.get("quant") or {}).get("group_size")
        bad = sorted(w for w in widths if group and w % group)
        if bad:
            return f"group size {group} does not divide input width {bad[0]}"
    return None


def model_widths(folder: Path) -> set[int]:
    from tierlm.edge.config import ModelConfig

    c = ModelConfig.from_dir(folder)
    return {c.hidden_size, c.intermediate_size, c.num_heads * c.head_dim}


# ---- llama.cpp ----


def llama_name(spec: str) -> str:
    """``Q2_K:Q4_0`` -> ``llama.cpp-q2_k-table-q4_0``."""
    kind, _, table = spec.partition(":")
    return f"llama.cpp-{kind.lower()}" + (f"-table-{table.lower()}" if table else "")


def source_type(gguf: Path) -> str:
    """The llama.cpp type a shipped GGUF's file name states (``...q4_k_m.gguf``, ``...Q4_1.gguf``)."""
    found = re.search(r"(q\d_k_[sml]|q\d_k|q\d_\d|iq\d_\w+|f16|f32|bf16)\.gguf$", gguf.name, re.IGNORECASE)
    return found.group(1).upper() if found else "?"


def llama_gguf(source: Path, spec: str, cache: Path, threads: int) -> Path:
    """The GGUF for ``spec``: the shipped file for its own type, else re-quantized from it once
    (cached) by llama.cpp's ``llama_model_quantize`` (``allow_requantize``: the source's tensors
    are dequantized to float and quantized again, as from our fp32 folder, which holds the same
    values)."""
    import ctypes

    import llama_cpp

    kind, _, table = spec.partition(":")
    if kind == source_type(source) and not table:
        return source
    out = cache / f"{llama_name(spec)}.gguf"
    if out.is_file():
        return out
    cache.mkdir(parents=True, exist_ok=True)
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = getattr(llama_cpp, f"LLAMA_FTYPE_MOSTLY_{kind}")
    params.allow_requantize = True
    params.nthread = threads
    if table:  # a tied table is llama.cpp's output tensor, the token embedding as well
        params.output_tensor_type = params.token_embedding_type = getattr(llama_cpp, f"GGML_TYPE_{table}")
    partial = out.with_suffix(".partial")
    log(f"{llama_name(spec)}: quantizing {source.name}")
    if llama_cpp.llama_model_quantize(str(source).encode(), str(partial).encode(), ctypes.byref(params)) != 0:
        raise RuntimeError(f"llama_model_quantize failed for {spec}")
    partial.rename(out)
    return out


def llama_perplexity(gguf: Path, ids: list[int], bos: int | None, args: argparse.Namespace) -> dict:
    """Perplexity (same windows, same token ids) and the stored bytes of a GGUF in llama.cpp."""
    import math

    import llama_cpp
    import numpy as np
    from llama_cpp import Llama

    from tierlm.edge.perplexity import windows

    context, stride = args.context, args.stride
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
    row = {
        "ppl": round(math.exp(nll / scored), 4),
        "eval_tokens": scored,
        "ppl_seconds": round(time.perf_counter() - start, 1),
        "bytes": int(llama_cpp.llama_model_size(llm.model)),
        "params": int(llama_cpp.llama_model_n_params(llm.model)),
    }
    llm.close()
    return row


def llama_decode_speed(gguf: Path, prompt_ids: list[int], args: argparse.Namespace) -> float:
    from llama_cpp import Llama

    from bench.edge import llama_cpp_stream, summarize

    llm = Llama(str(gguf), n_ctx=512, n_threads=args.threads, n_threads_batch=args.threads, verbose=False)
    try:
        llama_cpp_stream(llm, prompt_ids, 4)  # warm-up
        return summarize([llama_cpp_stream(llm, prompt_ids, args.decode_tokens)])["decode_tok_s"]
    finally:
        llm.close()


# ---- the perplexity cache ----


# A format's entry changes when the arithmetic of the CPU kernel that runs it changes, so that
# perplexities cached before are recomputed; formats without one are as they first were.
KERNEL_NUMERICS = {"int8": "per-token int8 activations, MatMulInteger"}


def formats_in(target: Path) -> set[str]:
    """The weight formats an artifact folder stores (none for a dense model or a GGUF file)."""
    manifest = target / "tierlm_compression.json" if target.is_dir() else None
    if manifest is None or not manifest.is_file():
        return set()
    found: set[str] = set()

    def walk(node: object) -> None:
        if isinstance(node, dict):
            if isinstance(node.get("format"), str):
                found.add(node["format"])
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(json.loads(manifest.read_text()))
    return found


class PerplexityCache:
    """Perplexities by (file fingerprint, evaluation settings), so a resumed run skips them."""

    def __init__(self, path: Path, enabled: bool) -> None:
        self.path, self.enabled = path, enabled  # without --reuse: recompute, but keep recording
        self.entries = json.loads(path.read_text()) if path.is_file() else {}

    @staticmethod
    def key(target: Path, settings: dict) -> str:
        """What the perplexity depends on: the weights file(s), the arithmetic of the kernels
        that run their formats, and the evaluation."""
        files = [target] if target.is_file() else sorted(target.glob("*.safetensors")) + sorted(target.glob("*.json"))
        stamp = [(f.name, f.stat().st_size, f.stat().st_mtime_ns) for f in files]
        numerics = {f: KERNEL_NUMERICS[f] for f in sorted(formats_in(target)) if f in KERNEL_NUMERICS}
        key = [str(target), stamp, settings] + ([numerics] if numerics else [])
        return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()

    def get(self, key: str) -> dict | None:
        return self.entries.get(key) if self.enabled else None

    def put(self, key: str, value: dict) -> None:
        self.entries[key] = value
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.write_text(json.dumps(self.entries, indent=1) + "\n")


# ---- the run ----


def caveat(model: str, source: Path, width: int) -> str:
    kind = source_type(source)
    return (
        f"Source: {source.name} ({kind}). Our fp32 is those weights dequantized, so any format on the "
        f"source's grid (its blocks and zero points at no fewer bits) re-quantizes almost losslessly "
        f"for that reason alone: llama.cpp's own types and our grid-w4g32 near the source's bits "
        f"say little about quality there. Below ~3.5 bits no grid helps either side. llama.cpp's "
        f"k-quants need rows of 256: {model}'s {width}-wide inputs "
        f"fall back to 32-blocks (Q5_0, Q4_0, IQ4_NL), and a tied table stays Q8_0 unless "
        f"'-table-' sets it. No importance matrix was used for llama.cpp (its tool is not in the "
        f"Python bindings)."
    )


def bench_model(model: str, args: argparse.Namespace, rows: list[dict], notes: dict, save) -> None:
    from transformers import AutoTokenizer

    from bench.compression_plot import plot_frontier
    from tierlm.edge import catalog, perplexity
    from tierlm.edge.decoder import load_model
    from tierlm.kernels.artifact import artifact_state, byte_breakdown
    from tierlm.kernels.mixed import parameter_count

    folder = catalog.prepare(model)
    fp32 = load_model(folder)
    params = parameter_count(fp32)
    sizes = {"fp32": byte_breakdown(artifact_state(fp32)[0])}
    del fp32
    out_root = catalog.cache_root() / "artifacts" / folder.name
    cache = PerplexityCache(catalog.cache_root() / PPL_CACHE, args.reuse)
    max_tokens = args.max_tokens or (QUICK_TOKENS if args.quick else None)
    settings = {"context": args.context, "stride": args.stride, "max_tokens": max_tokens}

    targets, compress_seconds = {"fp32": folder}, {}
    for recipe_path in args.recipe or recipe_paths(args.quick):
        why = misfit(recipe_path, model_widths(folder))
        if why:
            notes[f"{model}/{recipe_path.stem}"] = f"skipped: {why}"
            continue
        path, manifest = artifact_for(folder, recipe_path, out_root, args.reuse, args.threads)
        targets[path.name], sizes[path.name] = path, manifest["bytes"]
        compress_seconds[path.name] = manifest.get("compress_seconds")

    scores = perplexities(targets, settings, args, cache)
    llama = {}
    try:
        import llama_cpp  # noqa: F401
    except ImportError:
        notes[f"{model}/llama.cpp"] = "omitted: llama-cpp-python is not installed here (optional bench extra)"
    else:
        tokenizer = AutoTokenizer.from_pretrained(str(folder))
        ids, bos = perplexity.encode(tokenizer, perplexity.read_text(EVAL_TEXT), max_tokens)
        source = catalog.gguf_path(model)
        for spec in args.llama_type or (QUICK_LLAMA_TYPES if args.quick else LLAMA_TYPES):
            gguf = llama_gguf(source, spec, out_root / "llama.cpp", args.threads)
            key = cache.key(gguf, settings)
            scored = cache.get(key)
            if scored is None:
                log(f"{llama_name(spec)}: perplexity")
                scored = llama_perplexity(gguf, ids, bos, args)
                cache.put(key, scored)
            llama[llama_name(spec)] = (gguf, scored, (([bos] if bos is not None else []) + ids)[:16])

    base_ppl = scores["fp32"]["ppl"]

    def add(row: dict) -> None:
        row = {"name": row.pop("name"), "model": model, **row}
        row["bits_per_weight"] = round(8 * row["bytes"] / params, 3)
        row["ppl_vs_fp32"] = round(row["ppl"] / base_ppl - 1, 4)
        rows.append(row)
        log(json.dumps(row))
        save(False)

    for name, path in targets.items():
        row = {"name": name, **_bytes(sizes[name]), **scores[name]}
        if not args.no_decode:
            log(f"{name}: decoding")
            row["decode_tok_s"] = decode_speed(path, args)
        if compress_seconds.get(name) is not None:
            row["compress_seconds"] = compress_seconds[name]
        add(row)
    for name, (gguf, scored, prompt) in llama.items():
        row = {"name": name, "file": gguf.name, **{k: v for k, v in scored.items() if k != "params"}}
        if scored["params"] != params:
            notes[f"{model}/{name}"] = f"llama.cpp counts {scored['params']} parameters, we count {params}"
        if not args.no_decode:
            log(f"{name}: decoding")
            row["decode_tok_s"] = llama_decode_speed(gguf, prompt, args)
        add(row)
    plot = RESULTS / f"compression-{model}.png"
    hidden = min(model_widths(folder))
    plot_frontier(plot, model, [r for r in rows if r["model"] == model], caveat(model, catalog.gguf_path(model), hidden))
    log(f"wrote {plot}")


def recipe_paths(quick: bool) -> list[Path]:
    paths = sorted(RECIPES.glob("*.yaml"))
    return [p for p in paths if p.stem in QUICK_RECIPES] if quick else paths


def perplexities(targets: dict[str, Path], settings: dict, args: argparse.Namespace, cache: PerplexityCache) -> dict[str, dict]:
    """Perplexity of every target (cached ones reused); ``--ppl-jobs`` > 1 spreads the rest over
    worker processes. Perplexity is deterministic, so neither changes a number; decode speed,
    which is timed, is measured afterwards one model at a time."""
    keys = {name: cache.key(path, settings) for name, path in targets.items()}
    results = {name: cache.get(key) for name, key in keys.items()}
    todo = [name for name, result in results.items() if result is None]
    threads = 1 if args.ppl_jobs > 1 else args.threads
    work = {name: (str(targets[name]), settings["context"], settings["stride"], settings["max_tokens"], threads) for name in todo}
    if args.ppl_jobs == 1:
        for name, call in work.items():
            log(f"{name}: perplexity")
            results[name] = perplexity_of(*call)
            cache.put(keys[name], results[name])
        return results
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(args.ppl_jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
        futures = {name: pool.submit(perplexity_of, *call) for name, call in work.items()}
        for name, future in futures.items():
            results[name] = future.result()
            cache.put(keys[name], results[name])
            log(f"{name}: {results[name]}")
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", action="append", help=f"registered model (repeatable); default: {', '.join(MODELS)}")
    parser.add_argument("--recipe", action="append", type=Path, help="recipe YAML (repeatable); default: all examples")
    parser.add_argument("--llama-type", action="append", help="llama.cpp type, or TYPE:TABLE_TYPE (repeatable)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--quick", action="store_true", help=f"the first {QUICK_TOKENS} eval tokens, core recipes and types")
    parser.add_argument("--decode-tokens", type=int, default=64)
    parser.add_argument("--context", type=int, default=512, help="perplexity window")
    parser.add_argument("--stride", type=int, help="tokens between window starts (default: half the context)")
    parser.add_argument("--reuse", action="store_true", help="reuse artifacts and perplexities of the same recipe and file")
    parser.add_argument("--max-tokens", type=int, help=f"score only the first N eval tokens (--quick: {QUICK_TOKENS})")
    parser.add_argument("--ppl-jobs", type=int, default=1, help="worker processes (1 thread each) for the perplexities")
    parser.add_argument("--no-decode", action="store_true", help="leave out decode speed (perplexity and bytes only)")
    args = parser.parse_args()
    args.stride = args.stride or args.context // 2

    import torch

    from tierlm.results import write_results

    torch.set_num_threads(args.threads)
    models = args.model or list(MODELS)
    rows: list[dict] = []
    notes: dict[str, str] = {}
    load_start = os.getloadavg()

    def save(complete: bool) -> Path:
        # Written after every row, so a run cut short still leaves what it measured.
        return write_results(
            "compression",
            rows,
            models=models,
            threads=args.threads,
            eval_text="data/text/python-docs/eval",
            eval={"context": args.context, "stride": args.stride, "max_tokens": args.max_tokens or (QUICK_TOKENS if args.quick else None)},
            load_average={"start": list(load_start), "end": list(os.getloadavg())},
            complete=complete,
            notes=notes,
        )

    for model in models:
        bench_model(model, args, rows, notes, save)
    path = save(True)
    print(table(rows, notes))
    log(f"wrote {path}")


def _bytes(size: dict) -> dict:
    return {"bytes": size["total"], "bytes_blocks": size["blocks"], "bytes_embeddings": size["embeddings"]}


def table(rows: list[dict], notes: dict[str, str]) -> str:
    """The rows as a Markdown table (for the README), by model and bits per weight."""
    lines = [
        "| model | method | bits/weight | total MB | ppl | Δppl vs fp32 | decode tok/s |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for r in sorted(rows, key=lambda r: (r["model"], r["name"] != "fp32", r["bits_per_weight"])):
        speed = f"{r['decode_tok_s']:.1f}" if "decode_tok_s" in r else "–"
        lines.append(
            f"| {r['model']} | {r['name']} | {r['bits_per_weight']:.2f} | {r['bytes'] / 1e6:.1f} | {r['ppl']:.3f} "
            f"| {100 * r['ppl_vs_fp32']:+.2f}% | {speed} |"
        )
    lines += [f"\n{name}: {note}" for name, note in notes.items()]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
