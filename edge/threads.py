"""How an engine's threads are split between torch and onnxruntime.

An engine asked for N > 1 threads loads its model after :func:`prepare`: the onnxruntime
graphs that run a compressed model's linears (:mod:`tierlm.kernels.ops.ort_nbits`) then share
one pool of N threads whose workers stay awake between runs, and :func:`torch_threads` leaves
torch's own ops (norms, rope, attention, the cache, a compiled step's fused kernels) the engine
thread alone: at a decode step's few rows they are too small to split, and a second torch
thread would fight the pool's awake worker for a core. A model whose linears run in torch
(fp32, NF4's reference path) keeps all N threads for torch. The split is measured against
pools per session in ``bench/results/edge_step.json`` (rows with ``"pool": "shared"``).
"""

from __future__ import annotations

import torch
from torch import nn

from tierlm.kernels.modules import QuantLinear
from tierlm.kernels.ops.ort_nbits import OrtKernel, ort_available, share_pool


def prepare(threads: int | None) -> None:
    """Call before loading a model for an engine on ``threads`` threads (None: torch's setting
    stays, every session keeps a pool of its own): the sessions are built while loading."""
    if not threads:
        return
    torch.set_num_threads(threads)  # loading's own work (dequantizing, packing) uses them all
    if threads > 1 and ort_available():
        share_pool(threads)


def torch_threads(model: nn.Module, threads: int | None) -> int | None:
    """torch's intra-op threads for the thread that runs ``model`` in an engine asked for
    ``threads`` (None: leave torch's setting)."""
    if threads and threads > 1 and runs_on_shared_pool(model):
        return 1
    return threads


def runs_on_shared_pool(model: nn.Module) -> bool:
    """Whether any of ``model``'s linears runs on onnxruntime's shared pool."""
    return any(
        isinstance(m, QuantLinear) and isinstance(m.home_kernel, OrtKernel) and m.home_kernel.on_shared_pool
        for m in model.modules()
    )
