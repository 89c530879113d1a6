"""Sparsity patterns and the mask selection every pruner shares.

A pattern is either **unstructured** at a sparsity level (a fraction of weights set to zero) or
**N:M** (in every run of ``M`` consecutive input columns of a row, exactly ``N`` weights are kept;
2:4 is what NVIDIA's sparse tensor cores run). Masks are boolean ``[out, in]`` tensors, ``True``
= kept. Pruners differ only in the *score* they rank weights by (and SparseGPT in updating the
kept weights); :func:`select_mask` turns scores into a mask with the exact count the pattern asks.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Literal

import torch

Scope = Literal["row", "layer"]


@dataclass(frozen=True)
class SparsityPattern:
    """``SparsityPattern.parse("2:4")``, ``SparsityPattern.parse("unstructured", 0.5)``."""

    sparsity: float
    n: int = 0  # kept per group; 0 = unstructured
    m: int = 0

    def __post_init__(self) -> None:
        if self.structured:
            if not 0 < self.n < self.m:
                raise ValueError(f"N:M needs 0 < N < M, got {self.n}:{self.m}")
            if abs(self.sparsity - (1 - self.n / self.m)) > 1e-12:
                raise ValueError(f"{self.n}:{self.m} has sparsity {1 - self.n / self.m}, not {self.sparsity}")
        elif not 0 <= self.sparsity < 1:
            raise ValueError(f"sparsity must be in [0, 1), got {self.sparsity}")

    @classmethod
    def parse(cls, pattern: str, sparsity: float | None = None) -> SparsityPattern:
        """``"N:M"`` (e.g. ``"2:4"``, ``"4:8"``) or ``"unstructured"`` with a ``sparsity``."""
        match = re.fullmatch(r"(\d+):(\d+)", pattern.strip())
        if match:
            n, m = int(match[1]), int(match[2])
            if sparsity is not None and abs(sparsity - (1 - n / m)) > 1e-12:
                raise ValueError(f"{pattern} fixes sparsity at {1 - n / m}; got sparsity={sparsity}")
            return cls(1 - n / m, n, m)
        if pattern.strip() == "unstructured":
            if sparsity is None:
                raise ValueError("unstructured pruning needs a sparsity level")
            return cls(float(sparsity))
        raise ValueError(f"pattern must be 'unstructured' or 'N:M', got {pattern!r}")

    @property
    def structured(self) -> bool:
        return self.m > 0

    @property
    def name(self) -> str:
        """``"2:4"`` or ``"unstructured"`` (with :attr:`sparsity`, what metadata records)."""
        return f"{self.n}:{self.m}" if self.structured else "unstructured"

    def config(self) -> dict[str, Any]:
        return {"pattern": self.name, "sparsity": self.sparsity}

    def check_shape(self, in_features: int) -> None:
        if self.structured and in_features % self.m:
            raise ValueError(f"in_features {in_features} is not a multiple of M={self.m}")


def select_mask(scores: torch.Tensor, pattern: SparsityPattern, scope: Scope = "row") -> torch.Tensor:
    """Keep the highest-scoring weights: ``True`` = kept, shape of ``scores`` (``[out, in]``).

    N:M keeps the top ``N`` of every ``M`` consecutive columns of each row. Unstructured prunes
    exactly ``round(sparsity · count)`` weights per row (``scope="row"``, Wanda's comparison
    group) or over the whole matrix (``scope="layer"``, classic magnitude pruning). Selection is
    by ``topk`` rather than a threshold, so counts are exact even when scores tie.
    """
    rows, cols = scores.shape
    if pattern.structured:
        pattern.check_shape(cols)
        groups = scores.reshape(rows, cols // pattern.m, pattern.m)
        keep = torch.zeros_like(groups, dtype=torch.bool)
        keep.scatter_(-1, groups.topk(pattern.n, dim=-1).indices, True)
        return keep.reshape(rows, cols)
    flat = scores if scope == "row" else scores.reshape(1, -1)
    n_pruned = round(pattern.sparsity * flat.shape[1])
    keep = torch.ones_like(flat, dtype=torch.bool)
    if n_pruned:
        keep.scatter_(1, flat.topk(n_pruned, dim=1, largest=False).indices, False)
    return keep.reshape(rows, cols)
