"""The low-rank interface: a ``Factorizer`` decomposes a weight once, then truncates at any rank.

``decompose(weight, calib) -> Decomposition`` does the one expensive SVD; its singular values
feed the global rank allocation (:func:`tierlm.kernels.lowrank.budget.allocate_ranks`) and
``Decomposition.truncate(rank)`` yields the stored :class:`LowRankTensor`. Methods are named in
:data:`tierlm.kernels.lowrank.FACTORIZERS` like quantizers and pruners: ``FACTORIZERS.build("asvd")``.

Every method here writes ``W = U · diag(σ) · Vᵀ · T⁻¹`` with ``T`` the whitening transform
(identity for plain SVD). Truncating keeps the top ``r`` triplets, split evenly as
``L = U_r·sqrt(σ_r)`` and ``R = sqrt(σ_r)·V_rᵀ·T⁻¹`` (balanced factors keep float16 storage
accurate). The discarded energy ``Σ_{i>r} σ_i²`` is exactly the squared error the method
minimises: weight Frobenius error for SVD, calibration output error for whitened SVD.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from tierlm.kernels.lowrank.tensor import LowRankTensor
from tierlm.kernels.quant.group import SCALE_DTYPES

from tierlm.kernels.calibration import require_stats

if TYPE_CHECKING:
    from tierlm.kernels.calibration import LayerStats

_FACTORIZERS: dict[str, type[Factorizer]] = {}


@dataclass(eq=False)
class Decomposition:
    """``W = U · diag(sigma) · Vh · unwhiten`` (``unwhiten`` None = identity)."""

    u: torch.Tensor
    sigma: torch.Tensor
    vh: torch.Tensor
    unwhiten: torch.Tensor | None = None

    @property
    def shape(self) -> tuple[int, int]:
        return self.u.shape[0], self.vh.shape[1]

    def tail_energy(self, rank: int) -> float:
        """``Σ_{i>rank} σ_i²``: the squared error of truncating at ``rank``."""
        return float(self.sigma[rank:].double().pow(2).sum())

    def truncate(self, rank: int, dtype: str = "float16") -> LowRankTensor:
        """The best rank-``rank`` approximation in this method's error metric."""
        if not 0 <= rank <= self.sigma.numel():
            raise ValueError(f"rank must be in [0, {self.sigma.numel()}], got {rank}")
        root = self.sigma[:rank].sqrt()
        left = self.u[:, :rank] * root
        right = root.unsqueeze(1) * self.vh[:rank]
        if self.unwhiten is not None:
            right = right @ self.unwhiten
        return LowRankTensor(left.to(SCALE_DTYPES[dtype]), right.to(SCALE_DTYPES[dtype]))


class Factorizer(ABC):
    """One low-rank method: ``decompose(weight, calib) -> Decomposition``."""

    name: ClassVar[str]
    needs: ClassVar[frozenset[str]] = frozenset()

    @abstractmethod
    def decompose(self, weight: torch.Tensor, calib: LayerStats | None = None) -> Decomposition:
        """Decompose a ``[out_features, in_features]`` weight."""

    def config(self) -> dict[str, Any]:
        return {"method": self.name}

    def _require(self, calib: LayerStats | None) -> LayerStats:
        return require_stats(self.name, self.needs, calib)
