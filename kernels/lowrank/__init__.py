"""Low-rank factorizations, one module each, behind :class:`~tierlm.kernels.lowrank.base.Factorizer`,
the stored :class:`LowRankTensor`, and the global rank allocation.

Build a method by name with :data:`FACTORIZERS`, e.g. ``FACTORIZERS.build("asvd")``.
"""

from tierlm.kernels.lowrank.asvd import WhitenedSVDFactorizer
from tierlm.kernels.lowrank.base import Decomposition, Factorizer
from tierlm.kernels.lowrank.budget import LayerSpectrum, allocate_ranks, budget_for_reduction
from tierlm.kernels.lowrank.svd import SVDFactorizer
from tierlm.kernels.lowrank.tensor import LowRankTensor
from tierlm.registry import Registry

FACTORIZERS: Registry[Factorizer] = Registry(
    "low-rank method", {cls.name: cls for cls in (SVDFactorizer, WhitenedSVDFactorizer)}
)

__all__ = [
    "FACTORIZERS",
    "Decomposition",
    "Factorizer",
    "LayerSpectrum",
    "LowRankTensor",
    "allocate_ranks",
    "budget_for_reduction",
]
