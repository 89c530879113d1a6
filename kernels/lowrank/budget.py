"""Per-layer ranks that meet one global parameter or byte budget.

Objective: minimise ``Σ_layers tail_energy(r) / total_energy`` (each layer's *relative* squared
error in its method's metric: weight error for SVD, calibration output error for whitened SVD,
so layers with different activation scales are comparable) subject to
``Σ_layers r · (out + in) · bytes_per_param ≤ budget``.

Greedy by singular-value energy: every rank step of every layer is an item with gain
``σ_i² / total_energy`` and cost ``(out + in) · bytes_per_param``; items are taken in order of
gain per cost while they fit. Within a layer gains only decrease, so the greedy order takes each
layer's steps as a prefix, and the result is optimal up to the last item that did not fit
(the fractional-knapsack bound). A layer never gets a rank above ``out·in / (out + in)``, where
its factors would outgrow the dense matrix.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class LayerSpectrum:
    """Singular values of one layer (in its method's metric) and its shape."""

    sigma: torch.Tensor
    out_features: int
    in_features: int

    @property
    def max_rank(self) -> int:
        """The largest rank whose factors are still smaller than the dense matrix (and ≤ len(σ))."""
        n, k = self.out_features, self.in_features
        return min(self.sigma.numel(), (n * k - 1) // (n + k))

    def params(self, rank: int) -> int:
        return rank * (self.out_features + self.in_features)


def allocate_ranks(
    layers: Mapping[str, LayerSpectrum],
    budget: float,
    bytes_per_param: float = 1.0,
    min_rank: int = 0,
) -> dict[str, int]:
    """Ranks per layer with ``Σ params(r) · bytes_per_param ≤ budget``; see the module docstring.

    ``bytes_per_param=1`` makes ``budget`` a parameter count; 2 makes it float16 bytes.
    ``min_rank`` is granted to every layer first (raises if that alone exceeds the budget):
    standalone SVD compression needs ≥ 1 so no layer vanishes, a residual correction may be 0.
    """
    ranks = {name: min(min_rank, spec.max_rank) for name, spec in layers.items()}
    spent = sum(spec.params(ranks[name]) * bytes_per_param for name, spec in layers.items())
    if spent > budget:
        raise ValueError(f"budget {budget:g} is below the minimum-rank cost {spent:g}")
    names, gains, costs = [], [], []
    for name, spec in layers.items():
        energy = spec.sigma[: spec.max_rank].double().pow(2)
        total = float(spec.sigma.double().pow(2).sum())
        if total == 0:
            continue
        steps = energy[ranks[name] :] / total
        cost = (spec.out_features + spec.in_features) * bytes_per_param
        names += [name] * steps.numel()
        gains.append(steps / cost)
        costs += [cost] * steps.numel()
    if not names:
        return ranks
    order = torch.argsort(torch.cat(gains), descending=True, stable=True).tolist()
    closed: set[str] = set()
    for i in order:
        name = names[i]
        if name in closed:
            continue
        if spent + costs[i] > budget + 1e-9:
            closed.add(name)  # later steps of this layer would skip this one
            continue
        spent += costs[i]
        ranks[name] += 1
    return ranks


def budget_for_reduction(layers: Mapping[str, LayerSpectrum], reduction: float) -> int:
    """Parameter budget that removes ``reduction`` (e.g. 0.2) of the layers' dense parameters."""
    if not 0 < reduction < 1:
        raise ValueError("reduction must be in (0, 1)")
    dense = sum(s.out_features * s.in_features for s in layers.values())
    return math.floor(dense * (1 - reduction))
