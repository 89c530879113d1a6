"""Speed and size of the sparse, low-rank and composite paths vs dense, on Gemma 3 270M's shapes.

Weights are random and compressed with data-free methods (magnitude masks, RTN grids, random
low-rank factors): speed depends on shapes, sparsity and formats, not on the values. Every row
runs through the same ``QuantLinear`` / kernel objects a compressed model uses.

CPU (default, threads pinned for torch and onnxruntime): baseline fp32 ``nn.Linear``; CSR at a
sweep of unstructured sparsities finds where sparse pays (``crossover`` in the JSON: the lowest
sparsity at which CSR beats the faster of the two dense fp32 layouts, per shape and batch). ``--device cuda``: baseline
fp16 ``F.linear``; adds 2:4 semi-structured sparse tensor cores and int4 tinygemm.

    python bench/kernels_sparse.py --threads 1          # bench/results/kernels_sparse.json
    python bench/kernels_sparse.py --device cuda        # bench/results/kernels_sparse_cuda.json
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from tierlm.kernels.composite import CompositeTensor  # noqa: E402
from tierlm.kernels.lowrank import LowRankTensor  # noqa: E402
from tierlm.kernels.modules import QuantLinear, fast_kernel  # noqa: E402
from tierlm.kernels.ops.sparse_mm import CSRMatMul  # noqa: E402
from tierlm.kernels.methods import QUANTIZERS  # noqa: E402
from tierlm.kernels.quant.group import GroupGrid  # noqa: E402
from tierlm.kernels.sparse import SparseQuantTensor, SparseTensor, SparsityPattern, select_mask  # noqa: E402

from tierlm.results import write_results  # noqa: E402
from kernels_matmul import time_call  # noqa: E402  (this folder is on sys.path when run as a script)

# (layer, in_features, out_features) of Gemma 3 270M's MLP and its tied 262k-token output layer.
SHAPES = [("mlp.gate/up", 640, 2048), ("mlp.down", 2048, 640), ("lm_head", 640, 262144)]
BATCHES = (1, 8)
CUDA_BATCHES = (1, 8, 64)  # sparse tensor cores are built for larger tiles; show where they start
SPARSITIES = (0.5, 0.7, 0.8, 0.9, 0.95)
LM_HEAD_SPARSITIES = (0.5, 0.9, 0.95)  # the 671 MB fp32 table: fewer points keep the run short
COMPOSITE_RANK = 64

Kernel = Callable[[torch.Tensor], torch.Tensor]



def _sparse(w: torch.Tensor, pattern: SparsityPattern, encoding: str) -> SparseTensor:
    return SparseTensor.from_dense(w, select_mask(w.abs(), pattern, "layer"), pattern, encoding)


def _sparse_int4(w: torch.Tensor) -> SparseQuantTensor:
    pattern = SparsityPattern.parse("2:4")
    mask = select_mask(w.abs(), pattern)
    q = GroupGrid(4, 128).rtn(w * mask)
    return SparseQuantTensor.from_codes(
        q.codes(), q.scales, q.zeros(), mask, bits=4, group_size=128, symmetric=False, pattern=pattern
    )


def _random_lowrank(n: int, k: int, rank: int) -> LowRankTensor:
    g = torch.Generator().manual_seed(rank)
    left = torch.randn(n, rank, generator=g, dtype=torch.float32) / rank**0.5
    return LowRankTensor(left.half(), (torch.randn(rank, k, generator=g) * 0.02).half())


def _runner(qt, device: str) -> Kernel:
    """CPU: the ``QuantLinear`` a model runs; CUDA: that format's CUDA kernel itself.

    On CUDA the kernel is built directly, so building never touches CPU kernels (whose
    onnxruntime dependency a GPU image may lack); a format without a CUDA kernel is an error.
    """
    if device == "cpu":
        return QuantLinear(qt, backend="fast")
    kernel = fast_kernel(qt, device)
    if kernel is None:
        raise RuntimeError(f"no CUDA kernel for {qt.format} {qt.shape}")
    return kernel


def variants(w: torch.Tensor, layer: str, device: str) -> Iterator[tuple[str, Kernel, int]]:
    """(name, callable, stored bytes) per path; the dense baseline first."""
    n, k = w.shape
    if device == "cuda":
        half = w.to("cuda", torch.float16)
        yield "fp16 F.linear", lambda x: torch.nn.functional.linear(x, half), half.numel() * 2
        two_four = _sparse(w, SparsityPattern.parse("2:4"), "nm")
        yield "2:4 fp16 (semi-structured)", _runner(two_four, device), two_four.nbytes
    else:
        linear = torch.nn.Linear(k, n, bias=False)
        linear.weight.data = w
        yield "fp32 nn.Linear", linear, w.numel() * 4
        dense = SparseTensor.from_dense(w, torch.ones_like(w, dtype=torch.bool), None, "bitmask", "float32")
        yield "fp32 x@W (K-major copy)", QuantLinear(dense, backend="fast"), w.numel() * 4
        for s in LM_HEAD_SPARSITIES if layer == "lm_head" else SPARSITIES:
            st = _sparse(w, SparsityPattern.parse("unstructured", s), "csr")
            yield f"csr {round(s * 100)}% (fp32 MKL)", CSRMatMul(st), st.nbytes
    int4 = QUANTIZERS.build("rtn", bits=4, group_size=128).quantize(w)
    yield "int4-g128 dense", _runner(int4, device), int4.nbytes
    sparse_int4 = _sparse_int4(w)
    yield "2:4 int4-g128 (as int4 codes)", _runner(sparse_int4, device), sparse_int4.nbytes
    rank20 = int(0.8 * n * k / (n + k))  # the rank that removes 20% of the layer's parameters
    for rank in (COMPOSITE_RANK, rank20):
        lr = _random_lowrank(n, k, rank)
        yield f"low-rank r={rank} fp16", _runner(lr, device), lr.nbytes
    composite = CompositeTensor(sparse_int4, _random_lowrank(n, k, COMPOSITE_RANK))
    yield f"composite 2:4 int4 + r={COMPOSITE_RANK}", _runner(composite, device), composite.nbytes


def crossover(rows: list[dict]) -> list[dict]:
    """Per (layer, batch): the lowest sparsity at which CSR beats the *best* dense fp32 layout.

    Both dense layouts count (``nn.Linear`` is several times slower than a K-major copy at batch
    8 on this CPU's MKL), so a CSR "win" over a slow dense call is not reported as one.
    """
    out = []
    for layer in dict.fromkeys(r["layer"] for r in rows):
        for batch in BATCHES:
            here = [r for r in rows if r["layer"] == layer and r["batch"] == batch]
            dense_us = min(r["us_per_call"] for r in here if r["name"].startswith("fp32"))
            paying = [r for r in here if r["name"].startswith("csr") and r["us_per_call"] < dense_us]
            best = min(paying, key=lambda r: r["sparsity"]) if paying else None
            out.append({
                "layer": layer, "batch": batch, "best_dense_us": dense_us,
                "csr_pays_from_sparsity": None if best is None else best["sparsity"],
                "csr_speedup_vs_best_dense": None if best is None else round(dense_us / best["us_per_call"], 2),
            })  # fmt: skip
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--budget-s", type=float, default=0.5, help="timing budget per measurement")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--skip-lm-head", action="store_true", help="MLP shapes only (quick runs)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    console = Console(width=120)
    rows: list[dict] = []
    for layer, k, n in SHAPES:
        if args.skip_lm_head and layer == "lm_head":
            continue
        w = torch.randn(n, k, generator=torch.Generator().manual_seed(n + k)) * 0.02
        base: dict[int, float] = {}
        base_bytes = 0
        for name, fn, nbytes in variants(w, layer, args.device):
            base_bytes = base_bytes or nbytes
            for batch in BATCHES if args.device == "cpu" else CUDA_BATCHES:
                # float16 activations on CUDA (what a GPU model runs), float32 on CPU.
                dtype = torch.float16 if args.device == "cuda" else torch.float32
                us = time_call(fn, torch.randn(batch, k, device=args.device, dtype=dtype), args.budget_s)
                base.setdefault(batch, us)
                row = {
                    "name": name, "layer": layer, "shape": f"{k}x{n}", "batch": batch,
                    "us_per_call": round(us, 1), "speedup": round(base[batch] / us, 2),
                    "bytes": nbytes, "bytes_vs_baseline": round(nbytes / base_bytes, 3),
                }  # fmt: skip
                if name.startswith("csr"):
                    row["sparsity"] = float(name.split()[1].rstrip("%")) / 100
                rows.append(row)
                console.log(f"{layer} {name} batch {batch}: {us:.0f} us")
            del fn
        del w
    baseline = rows[0]["name"]
    where = f"{args.threads} CPU thread(s)" if args.device == "cpu" else torch.cuda.get_device_name()
    table = Table(title=f"sparse / low-rank matmuls, {where}; speedup vs {baseline}")
    for col in ("layer", "batch", "name", "us/call", "speedup", "bytes vs base"):
        table.add_column(col, justify="left" if col in ("layer", "name") else "right")
    for r in rows:
        table.add_row(
            r["layer"],
            str(r["batch"]),
            r["name"],
            f"{r['us_per_call']:.0f}",
            f"{r['speedup']:.2f}x",
            f"{r['bytes_vs_baseline']:.3f}",
        )
    console.print(table)
    extra: dict = {
        "threads": args.threads,
        "device": args.device,
        "torch": torch.__version__,
        "baseline": baseline,
    }
    if args.device == "cpu":
        extra["crossover"] = crossover(rows)
        for c in extra["crossover"]:
            console.print(
                f"{c['layer']} batch {c['batch']}: CSR beats the best dense fp32 from sparsity "
                f"{c['csr_pays_from_sparsity']} ({c['csr_speedup_vs_best_dense']}x there)"
            )
    path = write_results("kernels_sparse" + ("_cuda" if args.device == "cuda" else ""), rows, **extra)
    console.print(f"wrote {path}")


if __name__ == "__main__":
    main()
