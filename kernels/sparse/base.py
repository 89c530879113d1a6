"""The pruning interface: a ``Pruner`` turns a dense weight into a mask (and maybe new weights).

Mirrors :mod:`tierlm.kernels.quant.base`: each method lives in its own module, is named in
:data:`tierlm.kernels.sparse.PRUNERS`, says which calibration statistics it reads
(``Pruner.needs``), and is built with ``PRUNERS.build("wanda", pattern="2:4")``. The result is a :class:`PruneResult`; storing it is the
job of :mod:`tierlm.kernels.sparse.tensors` (``SparseTensor.from_pruned``).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from tierlm.kernels.sparse.pattern import SparsityPattern

from tierlm.kernels.calibration import require_stats

if TYPE_CHECKING:
    from tierlm.kernels.calibration import LayerStats

_PRUNERS: dict[str, type[Pruner]] = {}


@dataclass(frozen=True)
class PruneResult:
    """``mask`` (bool, ``True`` = kept) and ``weight`` (float32, zero wherever ``mask`` is False).

    Methods without a weight update (magnitude, Wanda) return the original weight masked;
    SparseGPT returns its reconstructed weight.
    """

    mask: torch.Tensor
    weight: torch.Tensor

    @property
    def sparsity(self) -> float:
        """Fraction of weights pruned."""
        return 1.0 - float(self.mask.sum()) / self.mask.numel()


class Pruner(ABC):
    """One pruning method with its pattern: ``prune(weight, calib) -> PruneResult``."""

    #: Name used by recipes (:data:`tierlm.kernels.sparse.PRUNERS`).
    name: ClassVar[str]
    #: Calibration statistics read from :class:`~tierlm.kernels.calibration.LayerStats`.
    needs: ClassVar[frozenset[str]] = frozenset()

    def __init__(self, pattern: str = "unstructured", sparsity: float | None = None) -> None:
        # "N:M" fixes its own sparsity (a given one must agree); unstructured defaults to 50%.
        if sparsity is None and ":" not in pattern:
            sparsity = 0.5
        self.pattern = SparsityPattern.parse(pattern, sparsity)

    @abstractmethod
    def prune(self, weight: torch.Tensor, calib: LayerStats | None = None) -> PruneResult:
        """Prune a ``[out_features, in_features]`` weight."""

    def config(self) -> dict[str, Any]:
        """JSON-able settings (what ``tierlm_compression.json`` records per layer)."""
        return {"method": self.name, **self.pattern.config()}

    def _require(self, calib: LayerStats | None) -> LayerStats:
        return require_stats(self.name, self.needs, calib)
