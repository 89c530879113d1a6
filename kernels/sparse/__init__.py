"""Pruning methods, one module each, behind :class:`~tierlm.kernels.sparse.base.Pruner`, and
the sparse storage formats (:mod:`tierlm.kernels.sparse.tensors`).

Importing this package registers every method; build one with :func:`get_pruner`.
"""

from tierlm.kernels.sparse import magnitude, sparsegpt, wanda  # noqa: F401  (registration)
from tierlm.kernels.sparse.base import Pruner, PruneResult, get_pruner, pruner_names
from tierlm.kernels.sparse.pattern import SparsityPattern, select_mask
from tierlm.kernels.sparse.tensors import SparseLayout, SparseQuantTensor, SparseTensor

__all__ = [
    "PruneResult",
    "Pruner",
    "SparseLayout",
    "SparseQuantTensor",
    "SparseTensor",
    "SparsityPattern",
    "get_pruner",
    "pruner_names",
    "select_mask",
]
