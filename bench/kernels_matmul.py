"""Matmul speed of each quantized fast path vs a float nn.Linear on Gemma 3 270M's layer shapes.

Weights are random (speed does not depend on the values); shapes are the model's real ones.
CPU (default): baseline fp32, threads pinned for torch and onnxruntime alike and reported; writes
bench/results/kernels_matmul.json. ``--device cuda``: baseline fp16, writes
bench/results/kernels_matmul_cuda.json. Both in the shape of tierlm/results.py, plus a printed table.

    python bench/kernels_matmul.py --threads 1
    python bench/kernels_matmul.py --device cuda
"""

from __future__ import annotations

import argparse
import json
import os
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
from tierlm.kernels.methods import QUANTIZERS
from tierlm.kernels.ops.int8_mm import Int8MatMul

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
ROUNDS = 5


def cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown cpu"


def time_call(fn, x: torch.Tensor, budget_s: float) -> float:
    """Median microseconds per call over ~budget_s (at least 3 calls after 2 warm-up calls)."""
    sync = torch.cuda.synchronize if x.is_cuda else (lambda: None)
    with torch.inference_mode():
        fn(x)
        fn(x)
        sync()
        times = []
        start = time.perf_counter()
        while len(times) < 3 or (time.perf_counter() - start < budget_s and len(times) < 2000):
            t0 = time.perf_counter()
            fn(x)
            sync()
            times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e6


def variants(linear: torch.nn.Linear, device: str):
    """(name, module, input dtype) for every fast path on ``device``; the float baseline first."""
    int8 = QuantLinear.from_linear(linear, QUANTIZERS.build("int8"), backend="fast")
    int4 = QUANTIZERS.build("rtn", bits=4, group_size=128).quantize(linear.weight)
    if device == "cuda":
        yield "fp16", linear.to("cuda", torch.float16), torch.float16
        yield "int8-w8a8 (_int_mm)", int8, torch.float16
        yield "int4-g128 (tinygemm)", QuantLinear(int4, linear.bias, backend="fast"), torch.float16
        return
    yield "fp32", linear, torch.float32
    yield "int8-w8a8 (ort MatMulInteger)", int8, torch.float32  # the CPU fast path
    yield "int8-w8a8 (_int_mm)", Int8MatMul(int8.qweight), torch.float32
    yield (
        "int4-g128 (ort acc4)",
        QuantLinear(int4, linear.bias, backend="fast", int4_accuracy_level=4),
        torch.float32,
    )
    yield (
        "int4-g128 (ort acc0)",
        QuantLinear(int4, linear.bias, backend="fast", int4_accuracy_level=0),
        torch.float32,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument(
        "--budget-s", type=float, default=2.0, help="timing budget per variant, shape and batch"
    )
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument(
        "--out", type=Path, default=None, help="default: bench/results/kernels_matmul[_cuda].json"
    )
    args = parser.parse_args()
    suffix = "_cuda" if args.device == "cuda" else ""
    out = args.out or Path(__file__).parent / "results" / f"kernels_matmul{suffix}.json"
    machine = cpu_model() if args.device == "cpu" else torch.cuda.get_device_name()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    rows = []
    console = Console(width=110)
    for layer, k, n in SHAPES:
        linear = torch.nn.Linear(k, n, bias=False)
        linear.weight.requires_grad_(False)
        built = list(variants(linear, args.device))
        base_name = built[0][0]
        for batch in BATCHES:
            # Interleave the variants over several rounds and keep each one's median round, so
            # load from other processes on this shared machine hits all of them alike.
            per_round: dict[str, list[float]] = {name: [] for name, _, _ in built}
            for _ in range(ROUNDS):
                for name, module, dtype in built:
                    x = torch.randn(batch, k, device=args.device, dtype=dtype)
                    per_round[name].append(time_call(module, x, args.budget_s / ROUNDS))
            base_us = statistics.median(per_round[base_name])
            for name, times in per_round.items():
                us = statistics.median(times)
                rows.append({
                    "name": name, "layer": layer, "shape": f"{k}x{n}", "batch": batch,
                    "us_per_call": round(us, 1), f"speedup_vs_{base_name}": round(base_us / us, 2),
                })  # fmt: skip
                console.log(f"{layer} {name} batch {batch}: {us:.0f} us")
        del built
        del linear

    threads = f", {args.threads} CPU thread(s)" if args.device == "cpu" else ""
    table = Table(title=f"matmul on {machine}{threads}")
    for col in ("layer", "shape", "batch", "name", "us/call", f"vs {base_name}"):
        table.add_column(col, justify="left" if col in ("layer", "shape", "name") else "right")
    for r in rows:
        speedup = r[f"speedup_vs_{base_name}"]
        table.add_row(
            r["layer"], r["shape"], str(r["batch"]), r["name"], f"{r['us_per_call']:.0f}", f"{speedup:.2f}x"
        )
    console.print(table)

    result = {
        "bench": "kernels_matmul",
        "machine": f"{cpu_model()}, {args.threads} of {os.cpu_count()} cores used"
        if args.device == "cpu"
        else machine,
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join(shlex.quote(a) for a in [Path(sys.executable).name, *sys.argv]),
        "threads": args.threads if args.device == "cpu" else None,
        "method": f"median of {ROUNDS} interleaved rounds, each the median call time over its budget",
        "torch": torch.__version__,
        "rows": rows,
    }
    if args.device == "cpu":
        result["onnxruntime"] = __import__("onnxruntime").__version__
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    console.print(f"wrote {out}")


if __name__ == "__main__":
    main()
