"""How an engine's threads are split between torch and onnxruntime.

A process that serves one engine's model and nothing else (``tierlm edge serve``) calls
:func:`share_pool_for_serving` before loading it: the onnxruntime graphs that run a compressed
model's linears (:mod:`tierlm.kernels.ops.ort_nbits`) then share one pool of N threads whose
workers stay awake between runs, and :func:`torch_threads` leaves torch's own ops (norms, rope,
attention, the cache, a compiled step's fused kernels) the engine thread alone: at a decode
step's few rows they are too small to split, and a second torch thread would fight the pool's
awake worker for a core. A model whose linears run in torch (fp32, NF4's reference path) keeps
all N threads for torch. The split is measured against pools per session in
``bench/results/edge_step.json`` (rows with ``"pool": "shared"``).

Any other process keeps a pool per session: once onnxruntime's shared pool exists it refuses
every session that asks for a pool of its own (the router's ONNX query encoder does), so a
process that mixes engines with other onnxruntime users, such as ``tierlm router collect``
with its in-process tiers, must not share it.
"""

from __future__ import annotations

import torch
from torch import nn

from tierlm.edge.fused_layers import LayerTail
from tierlm.kernels.modules import QuantLinear
from tierlm.kernels.ops.ort_nbits import OrtKernel, ort_available, share_pool


def share_pool_for_serving(threads: int) -> None:
    """In a process that serves one engine and runs no other onnxruntime session: build the
    model's sessions, loaded after this call, on one shared pool of ``threads`` (> 1) threads."""
    if threads > 1 and ort_available():
        share_pool(threads)


def prepare(threads: int | None) -> None:
    """Call before loading a model for an engine on ``threads`` threads (None: torch's setting
    stays): loading's own work (dequantizing, packing) and any sessions built without the shared
    pool take their threads from torch's setting."""
    if threads:
        torch.set_num_threads(threads)


def torch_threads(model: nn.Module, threads: int | None) -> int | None:
    """torch's intra-op threads for the thread that runs ``model`` in an engine asked for
    ``threads`` (None: leave torch's setting)."""
    if threads and threads > 1 and runs_on_shared_pool(model):
        return 1
    return threads


def runs_on_shared_pool(model: nn.Module) -> bool:
    """Whether any of ``model``'s linears runs on onnxruntime's shared pool: on its own, or in
    a layer's fused tail (whose graph then holds the linears' weights)."""
    kernels = [m.home_kernel for m in model.modules() if isinstance(m, QuantLinear)]
    kernels += [m.tail.kernel for m in model.modules() if isinstance(getattr(m, "tail", None), LayerTail)]
    return any(isinstance(k, OrtKernel) and k.on_shared_pool for k in kernels)
