"""Where a decode step's time goes (one row, and eight): the output layer, the blocks' linears, the rest.

    python bench/edge_step.py [--model gemma-3-270m] [--artifact w8a8-plain ...] [--threads 1 --threads 2]
                              [--reps 30] [--compile] [--no-llama-cpp]

For the prepared fp32 folder and each artifact (built from ``examples/recipes/<name>.yaml``
into ``~/.cache/tierlm/artifacts/<model>/<name>`` when missing and reused while its recipe is
unchanged, as bench/edge.py does), in a fresh process per model and thread count, loaded the way the edge engine loads it (projections fused, loading on a passing
thread so the timing thread's OpenMP team is the only one):

- ``step_ms``: one decode step (one token at position 32, logits of the whole vocabulary);
- ``head_ms``: the final norm and output layer (soft-capping included) alone;
- ``linears_ms``: every block linear the step calls (fused q/k/v and gate/up where the
  format allows; a layer's o_proj, norms, MLP and the next layer's q/k/v where they run as
  one onnxruntime graph, ``tierlm.edge.fused_layers``), called once each in the step's order
  on inputs of their widths, the whole sequence timed: as in a step, each weight is read from
  memory after the others have pushed it out of the caches (timed alone and repeated, a small
  weight stays cached and looks up to half as costly);
- ``other_ms``: ``step_ms - head_ms - linears_ms``: norms, rope, attention, the KV cache,
  embedding and Python dispatch.

``pool``: how the threads are split (tierlm.edge.threads). ``shared``, ``tierlm edge serve``'s split: the
onnxruntime graphs on one process-wide pool, torch on one thread; ``own``: every graph with a pool
of its own, torch on all threads (the split before the shared pool; measured beside it for
artifacts at more than one thread; a model without onnxruntime graphs, fp32, has only this one).

With ``--compile``, ``compiled_step_ms``: the same step through ``Transformer.compile_decode``'s
graph (built before timing, not counted). The same columns with ``_8_rows``: one step of eight
rows, one token each in slots 0..7 (what bench/edge.py's eight streams share), and
``speedup_8_rows`` (``compiled_speedup_8_rows``): eight times the one-row step over the
eight-row step, the most that batching eight streams can gain in tokens/s. Each is the median over ``--reps`` calls after warm-up. The anchor row is llama.cpp on the
model's own Q4_K_M GGUF with the same threads (one ``eval`` per token, as bench/edge.py times
it). Writes bench/results/edge_step.json.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # `bench.*` imports when run as a script

DEFAULT_ARTIFACTS = ("w8a8-plain", "w8a8-t4", "gptq-w4g64", "composite-edge")
POSITION = 32  # every timed step attends over the same number of keys
BATCH_ROWS = 8  # bench/edge.py's concurrent streams: the batched step those streams share


def median_ms(fn: Callable[[], object], reps: int) -> float:
    """Median wall time of `fn()` in ms over `reps` calls, after three untimed ones."""
    for _ in range(3):
        fn()
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return round(1000 * statistics.median(times), 3)


def block_linears(model) -> list[tuple[object, tuple[int, ...]]]:
    """The linear calls one decode step makes, in order, each with its inputs' widths."""
    c = model.config
    hidden, attn_out, mlp_hidden = c.hidden_size, c.num_heads * c.head_dim, c.intermediate_size
    calls = []
    fed = False  # whether the previous layer's tail made this layer's q/k/v
    for layer in model.layers:
        attn, mlp = layer.self_attn, layer.mlp
        if not fed:
            calls += [(attn.qkv, (hidden,))] if attn.qkv is not None else [(m, (hidden,)) for m in (attn.q_proj, attn.k_proj, attn.v_proj)]
        fed = layer.tail is not None and layer.tail.next_sizes is not None
        if layer.tail is not None:  # o_proj, the norms, the MLP (and the next q/k/v) in one run
            calls.append((layer.tail, (attn_out, hidden)))
            continue
        calls.append((attn.o_proj, (attn_out,)))
        calls += [(mlp.gate_up, (hidden,))] if mlp.gate_up is not None else [(m, (hidden,)) for m in (mlp.gate_proj, mlp.up_proj)]
        calls.append((mlp.down_proj, (mlp_hidden,)))
    return calls


def breakdown(model_dir: str, threads: int, reps: int, compile: bool, share_pool: bool) -> dict:
    """The step's parts for one model on `threads` threads, split as `tierlm edge serve` splits
    them or (not `share_pool`) with a pool per onnxruntime graph (runs in a fresh process)."""
    import torch

    from tierlm.edge.decoder import load_model
    from tierlm.edge.engine import on_passing_thread
    from tierlm.edge.threads import runs_on_shared_pool, share_pool_for_serving, torch_threads

    torch.set_num_threads(threads)
    if share_pool:
        share_pool_for_serving(threads)  # as `tierlm edge serve` does

    def load():
        model = load_model(Path(model_dir))
        torch.set_num_threads(torch_threads(model, threads))  # before compiling: graphs are built for it
        model.fuse_projections()
        model.setup_cache(BATCH_ROWS, POSITION + 8)
        if compile:
            model.compile_decode()
        return model

    model = on_passing_thread(load)
    torch.set_num_threads(torch_threads(model, threads))  # again: OpenMP's setting is per thread, and this one times
    c = model.config
    result = {"pool": "shared" if runs_on_shared_pool(model) else "own"}
    with torch.inference_mode():
        slots = torch.arange(BATCH_ROWS)
        model(torch.full((BATCH_ROWS, POSITION), 5), torch.arange(POSITION).expand(BATCH_ROWS, POSITION), slots, logits="none")
        for rows in (1, BATCH_ROWS):
            suffix = "" if rows == 1 else f"_{rows}_rows"
            slot = slots[:rows]
            token, position = torch.full((rows, 1), 5), torch.full((rows, 1), POSITION)
            step_ms = median_ms(lambda: model(token, position, slot, logits="last"), reps)
            x = torch.randn(rows, 1, c.hidden_size)
            head_ms = median_ms(lambda: model.head(x), reps)
            calls = [(module, [torch.randn(rows, 1, width) for width in widths]) for module, widths in block_linears(model)]
            linears_ms = median_ms(lambda: [module(*inputs) for module, inputs in calls], reps)
            result |= {
                f"step_ms{suffix}": step_ms,
                f"head_ms{suffix}": head_ms,
                f"linears_ms{suffix}": linears_ms,
                f"other_ms{suffix}": round(step_ms - head_ms - linears_ms, 3),
            }
            if compile:
                result[f"compiled_step_ms{suffix}"] = median_ms(lambda: model.decode(token, position, slot), reps)
    result |= {"tok_s": round(1000 / result["step_ms"], 2), "head_share": round(result["head_ms"] / result["step_ms"], 3)}
    # How many times the single row's tokens/s a step of BATCH_ROWS rows gives: what batching
    # concurrent streams can gain at most, before the engine's own per-token work.
    for prefix in ("", "compiled_") if compile else ("",):
        result[f"{prefix}speedup_{BATCH_ROWS}_rows"] = round(
            BATCH_ROWS * result[f"{prefix}step_ms"] / result[f"{prefix}step_ms_{BATCH_ROWS}_rows"], 2
        )
    return result


def llama_cpp_step(gguf: Path, threads: int, reps: int) -> dict:
    from llama_cpp import Llama

    llm = Llama(str(gguf), n_ctx=128, n_threads=threads, n_threads_batch=threads, verbose=False)
    try:
        llm.eval([5] * POSITION)

        def one() -> None:
            llm.n_tokens = POSITION  # rewrite the same position each time, as the rows above do
            llm.eval([5])

        step_ms = median_ms(one, reps)
    finally:
        llm.close()
    return {"step_ms": step_ms, "tok_s": round(1000 / step_ms, 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="gemma-3-270m")
    parser.add_argument("--artifact", action="append", help=f"artifact name (repeatable); default: {', '.join(DEFAULT_ARTIFACTS)}")
    parser.add_argument("--threads", type=int, action="append", help="thread counts (repeatable); default: 1 and 2")
    parser.add_argument("--reps", type=int, default=30)
    parser.add_argument("--no-llama-cpp", action="store_true")
    parser.add_argument("--compile", action="store_true", help="also time the compiled step (compiled_step_ms)")
    args = parser.parse_args()

    from bench.compression import RECIPES, artifact_for, in_fresh_process
    from tierlm.edge import catalog
    from tierlm.results import write_results

    thread_counts = args.threads or [1, 2]
    folder = catalog.prepare(args.model)
    artifacts = catalog.cache_root() / "artifacts" / folder.name
    targets = {"fp32": folder}
    for name in args.artifact or DEFAULT_ARTIFACTS:
        targets[name], _ = artifact_for(folder, RECIPES / f"{name}.yaml", artifacts, True, max(thread_counts))
    rows = []
    for threads in thread_counts:
        if not args.no_llama_cpp:
            rows.append({"name": "llama.cpp-q4_k_m", "threads": threads,
                         **in_fresh_process(llama_cpp_step, catalog.gguf_path(args.model), threads, args.reps)})
            print(rows[-1], flush=True)
        for name, path in targets.items():
            # The split before the shared pool, beside edge serve's, where there is a pool to share.
            for share_pool in (True, False) if threads > 1 and name != "fp32" else (True,):
                rows.append({"name": name, "threads": threads,
                             **in_fresh_process(breakdown, str(path), threads, args.reps, args.compile, share_pool)})
                print(rows[-1], flush=True)
    path = write_results("edge_step", rows, model=args.model, position=POSITION, reps=args.reps)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
