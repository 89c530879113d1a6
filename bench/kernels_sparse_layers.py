"""Layer-output error of each pruning / low-rank / composite method on real Gemma 3 270M layers.

Calibration inputs come from the Python-docs calibration split, held-out inputs from its eval
split (data/text/python-docs), both as seen by the real model (prepared HF folder, see
``tierlm model prepare``). For each chosen linear layer and method the row is the relative
output error ``‖X(W - Ŵ)ᵀ‖ / ‖XWᵀ‖`` on held-out ``X`` and the stored bytes against fp32. This is
a per-layer check of the kernels, not a perplexity: the model-level numbers belong to the
compression benchmark.

    python bench/kernels_sparse_layers.py --threads 2
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from tierlm.kernels.calibration import CalibrationRecorder, StatsSpec  # noqa: E402
from tierlm.kernels.composite import CompositeCompressor  # noqa: E402
from tierlm.kernels.methods import QUANTIZERS  # noqa: E402

from tierlm.results import write_results  # noqa: E402

TEXT = ROOT / "data" / "text" / "python-docs"
LAYERS = (
    "model.layers.{i}.self_attn.q_proj",
    "model.layers.{i}.mlp.up_proj",
    "model.layers.{i}.mlp.down_proj",
)
SEQ = 512
INT4 = {"method": "gptq", "bits": 4, "group_size": 128}


def methods(n: int, k: int, base_bytes: int, int4_bytes: int) -> dict[str, dict]:
    """Composite configs per method name; ranks fill 30% of the fp32 bytes next to each base."""
    rank20 = int(0.8 * n * k / (n + k))  # removes 20% of the layer's parameters
    # The composite's rank: what fits under 30% of the fp32 bytes next to its 2:4 int4 base.
    composite_rank = max(0, int((0.30 * 4 * n * k - base_bytes) / (2 * (n + k))))
    out: dict[str, dict] = {}
    for pattern, label in (("unstructured", "50"), ("2:4", "2of4")):
        for pruner in ("magnitude", "wanda", "sparsegpt"):
            out[f"{pruner}-{label}"] = {"prune": {"method": pruner, "pattern": pattern, "sparsity": 0.5}}
    out["svd-20"] = {"lowrank": {"method": "svd", "rank": rank20}}
    out["asvd-20"] = {"lowrank": {"method": "asvd", "rank": rank20}}
    out["gptq-int4"] = {"quant": INT4}
    out["sparsegpt-2of4-int4"] = {"prune": {"method": "sparsegpt", "pattern": "2:4"}, "quant": INT4}
    out["composite"] = {
        "prune": {"method": "sparsegpt", "pattern": "2:4"},
        "quant": INT4,
        "lowrank": {"method": "asvd", "rank": composite_rank},
    }
    # Same byte budget, other splits: unstructured 50% base; no pruning (int4 + a larger rank).
    out["composite-unstructured"] = out["composite"] | {"prune": {"method": "sparsegpt", "sparsity": 0.5}}
    dense_rank = max(0, int((0.30 * 4 * n * k - int4_bytes) / (2 * (n + k))))
    out["int4+asvd (no pruning)"] = {"quant": INT4, "lowrank": {"method": "asvd", "rank": dense_rank}}
    return out


def token_batches(tokenizer, folder: Path, n_seqs: int) -> torch.Tensor:
    text = "\n\n".join(p.read_text() for p in sorted(folder.glob("*.txt")))
    ids = tokenizer(text, return_tensors="pt").input_ids[0]
    if ids.numel() < n_seqs * SEQ:
        raise ValueError(f"{folder} has {ids.numel()} tokens, fewer than {n_seqs} x {SEQ}")
    return ids[: n_seqs * SEQ].reshape(n_seqs, SEQ)


class _Stop(Exception):
    """Raised after the last hooked layer: the rest of the model is not needed."""


def record(model, names: list[str], batches: torch.Tensor, stop_after: torch.nn.Module, spec: StatsSpec):
    """Calibration statistics per layer from running ``batches`` through the model."""
    modules = {n: model.get_submodule(n) for n in names}

    def stop(*_):
        raise _Stop

    handle = stop_after.register_forward_hook(stop)
    try:
        with CalibrationRecorder(modules, spec) as rec, torch.inference_mode():
            for batch in batches:
                try:
                    model(batch.unsqueeze(0))
                except _Stop:
                    pass
    finally:
        handle.remove()
    return rec.stats


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-dir", type=Path, default=Path.home() / ".cache/tierlm/models/gemma-3-270m")
    parser.add_argument("--layers", type=int, nargs="+", default=[6])
    parser.add_argument("--calib-seqs", type=int, default=16, help=f"calibration sequences of {SEQ} tokens")
    parser.add_argument("--eval-seqs", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(args.model_dir)
    model = AutoModelForCausalLM.from_pretrained(args.model_dir, dtype=torch.float32).eval()
    names = [t.format(i=i) for i in args.layers for t in LAYERS]
    last = model.get_submodule(f"model.layers.{max(args.layers)}")
    calib = record(
        model, names, token_batches(tokenizer, TEXT / "calib", args.calib_seqs), last, StatsSpec(hessian=True)
    )
    held = record(
        model,
        names,
        token_batches(tokenizer, TEXT / "eval", args.eval_seqs),
        last,
        StatsSpec(max_samples=SEQ * args.eval_seqs),
    )

    console = Console(width=110)
    rows = []
    for name in names:
        w = model.get_submodule(name).weight.detach().float()
        n, k = w.shape
        x = held[name].samples
        ref = (x @ w.t()).norm()
        rtn = INT4 | {"method": "rtn"}
        base_bytes = (
            CompositeCompressor(prune={"method": "magnitude", "pattern": "2:4"}, quant=rtn).quantize(w).nbytes
        )
        int4_bytes = CompositeCompressor(quant=rtn).quantize(w).nbytes
        for method, config in methods(n, k, base_bytes, int4_bytes).items():
            qt = QUANTIZERS.build("composite", **config).quantize(w, calib[name])
            err = float((x @ (w - qt.dequantize()).t()).norm() / ref)
            rows.append({
                "layer": name, "shape": f"{k}x{n}", "method": method, "rel_output_error": round(err, 4),
                "bytes": qt.nbytes, "bytes_vs_fp32": round(qt.nbytes / (4 * n * k), 3),
                "rank": qt.metadata().get("rank", 0),
            })  # fmt: skip
            console.log(f"{name} {method}: error {err:.4f}, {qt.nbytes / (4 * n * k):.3f} of fp32")
    table = Table(
        title=f"relative layer-output error on held-out text, Gemma 3 270M ({args.calib_seqs}x{SEQ} calibration tokens)"
    )
    for col in ("layer", "method", "error", "bytes vs fp32", "rank"):
        table.add_column(col, justify="left" if col in ("layer", "method") else "right")
    for r in rows:
        table.add_row(
            r["layer"],
            r["method"],
            f"{r['rel_output_error']:.4f}",
            f"{r['bytes_vs_fp32']:.3f}",
            str(r["rank"]),
        )
    console.print(table)
    path = write_results(
        "kernels_sparse_layers", rows, model=str(args.model_dir.name), calib_tokens=args.calib_seqs * SEQ,
        eval_tokens=args.eval_seqs * SEQ, threads=args.threads,
    )  # fmt: skip
    console.print(f"wrote {path}")


if __name__ == "__main__":
    main()
