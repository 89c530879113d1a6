"""Matmul speed of each quantized fast path vs fp32 nn.Linear on Gemma 3 270M's layer shapes.

Weights are random (speed does not depend on the values); shapes are the model's real ones.
Threads are pinned for torch and onnxruntime alike and reported. Writes
bench/results/kernels_matmul.json in the shape of DESIGN §7 and prints a table.

    python bench/kernels_matmul.py --threads 1
"""

from __future__ import annotations

import argparse
import json
import platform
import shlex
import statistics
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

from tierlm.kernels.modules import QuantLinear
from tierlm.kernels.quant import get_quantizer

# (layer, in_features, out_features) of Gemma 3 270M (hidden 640, 4 heads x 256, 1 kv head).
SHAPES = [
    ("q_proj", 640, 1024),
    ("k_proj/v_proj", 640, 256),
    ("o_proj", 1024, 640),
    ("mlp.gate/up", 640, 2048),
    ("mlp.down", 2048, 640),
    ("lm_head (tied embedding)", 640, 262144),
]
BATCHES = (1, 32)


def cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown cpu"


def time_call(fn, x: torch.Tensor, budget_s: float) -> float:
    """Median microseconds per call over ~budget_s (at least 3 calls after 2 warm-up calls)."""
    with torch.inference_mode():
        fn(x)
        fn(x)
        times = []
        start = time.perf_counter()
        while len(times) < 3 or (time.perf_counter() - start < budget_s and len(times) < 2000):
            t0 = time.perf_counter()
            fn(x)
            times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e6


def variants(linear: torch.nn.Linear):
    """(name, module) for every fast path; fp32 first."""
    yield "fp32", linear
    yield "int8-w8a8 (_int_mm)", QuantLinear.from_linear(linear, get_quantizer("int8"), backend="fast")
    int4 = get_quantizer("rtn", bits=4, group_size=128).quantize(linear.weight)
    yield "int4-g128 (ort acc4)", QuantLinear(int4, linear.bias, backend="fast", int4_accuracy_level=4)
    yield "int4-g128 (ort acc0)", QuantLinear(int4, linear.bias, backend="fast", int4_accuracy_level=0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--budget-s", type=float, default=1.0, help="timing budget per measurement")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "kernels_matmul.json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    rows = []
    console = Console(width=110)
    for layer, k, n in SHAPES:
        linear = torch.nn.Linear(k, n, bias=False)
        linear.weight.requires_grad_(False)
        fp32_us: dict[int, float] = {}
        for name, module in variants(linear):
            for batch in BATCHES:
                us = time_call(module, torch.randn(batch, k), args.budget_s)
                fp32_us.setdefault(batch, us)
                rows.append({
                    "name": name, "layer": layer, "shape": f"{k}x{n}", "batch": batch,
                    "us_per_call": round(us, 1), "speedup_vs_fp32": round(fp32_us[batch] / us, 2),
                })  # fmt: skip
                console.log(f"{layer} {name} batch {batch}: {us:.0f} us")
        del linear

    table = Table(title=f"matmul, {args.threads} thread(s), {cpu_model()}")
    for col in ("layer", "shape", "batch", "name", "us/call", "vs fp32"):
        table.add_column(col, justify="right" if col in ("batch", "us/call", "vs fp32") else "left")
    for r in rows:
        table.add_row(r["layer"], r["shape"], str(r["batch"]), r["name"], f"{r['us_per_call']:.0f}", f"{r['speedup_vs_fp32']:.2f}x")
    console.print(table)

    result = {
        "bench": "kernels_matmul",
        "machine": f"{cpu_model()}, {torch.get_num_threads()} of {__import__('os').cpu_count()} cores used",
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join(shlex.quote(a) for a in [Path(sys.executable).name, *sys.argv]),
        "threads": args.threads,
        "torch": torch.__version__,
        "onnxruntime": __import__("onnxruntime").__version__,
        "rows": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    console.print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
