"""Pruning methods, one module each, behind :class:`~tierlm.kernels.sparse.base.Pruner`, and
the sparse storage formats (:mod:`tierlm.kernels.sparse.tensors`).

Build a method by name with :data:`PRUNERS`, e.g. ``PRUNERS.build("sparsegpt", pattern="2:4")``.
"""

from tierlm.registry import Registry
from tierlm.kernels.sparse.base import Pruner, PruneResult
from tierlm.kernels.sparse.magnitude import MagnitudePruner
from tierlm.kernels.sparse.pattern import SparsityPattern, select_mask
from tierlm.kernels.sparse.sparsegpt import SparseGPTPruner
from tierlm.kernels.sparse.tensors import SparseLayout, SparseQuantTensor, SparseTensor
from tierlm.kernels.sparse.wanda import WandaPruner

PRUNERS: Registry[Pruner] = Registry(
    "pruner", {cls.name: cls for cls in (MagnitudePruner, WandaPruner, SparseGPTPruner)}
)

__all__ = [
    "PRUNERS",
    "PruneResult",
    "Pruner",
    "SparseLayout",
    "SparseQuantTensor",
    "SparseTensor",
    "SparsityPattern",
    "select_mask",
]
