"""Low-rank factorizations, one module each, behind :class:`~tierlm.kernels.lowrank.base.Factorizer`,
the stored :class:`LowRankTensor`, and the global rank allocation.

Importing this package registers every method; build one with :func:`get_factorizer`.
"""

from tierlm.kernels.lowrank import asvd, svd  # noqa: F401  (registration)
from tierlm.kernels.lowrank.base import Decomposition, Factorizer, factorizer_names, get_factorizer
from tierlm.kernels.lowrank.budget import LayerSpectrum, allocate_ranks, budget_for_reduction
from tierlm.kernels.lowrank.tensor import LowRankTensor

__all__ = [
    "Decomposition",
    "Factorizer",
    "LayerSpectrum",
    "LowRankTensor",
    "allocate_ranks",
    "budget_for_reduction",
    "factorizer_names",
    "get_factorizer",
]
