"""Per-layer calibration statistics, accumulated batch by batch from a layer's inputs.

A :class:`LayerStats` sees the inputs ``X`` of one linear layer (any leading shape, last dim =
``in_features``) and keeps only what the methods need, in memory independent of how many tokens
flow through it:

- ``hessian``: the running sum ``XᵀX`` (``in_features²`` floats) and the row count; GPTQ and
  SparseGPT read ``H = 2 XᵀX / n``;
- ``abs_mean`` / ``abs_max`` / ``sq_sum``: per-input-channel ``mean|X|`` (AWQ), ``max|X|``
  (SmoothQuant, LLM.int8 outliers) and ``Σ X²`` (Wanda's ``‖X_j‖₂``), ``3 · in_features`` floats;
- ``samples``: a uniform reservoir sample of at most ``max_samples`` input rows (AWQ's grid search
  evaluates candidate scales on them).

:class:`CalibrationRecorder` attaches forward pre-hooks that feed a ``LayerStats`` per module.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Mapping

import torch

#: Statistic names a quantizer may list in ``Quantizer.needs``.
STAT_NAMES = ("hessian", "abs_mean", "abs_max", "sq_sum", "samples")


@dataclass(frozen=True)
class StatsSpec:
    """Which statistics to collect; build one from the union of the methods' ``needs``."""

    hessian: bool = False
    channel_stats: bool = True  # abs_mean, abs_max and sq_sum: cheap, always useful
    max_samples: int = 0

    @classmethod
    def for_needs(cls, needs: Iterable[str], max_samples: int = 2048) -> "StatsSpec":
        """The cheapest spec that satisfies ``needs`` (names from :data:`STAT_NAMES`)."""
        needs = set(needs)
        unknown = needs - set(STAT_NAMES)
        if unknown:
            raise ValueError(f"unknown calibration statistics {sorted(unknown)}")
        return cls(hessian="hessian" in needs, max_samples=max_samples if "samples" in needs else 0)


class LayerStats:
    """Streaming statistics of one layer's inputs; see the module docstring."""

    def __init__(self, in_features: int, spec: StatsSpec = StatsSpec(), seed: int = 0) -> None:
        self.in_features = in_features
        self.spec = spec
        self.n_rows = 0
        self.xtx = torch.zeros(in_features, in_features) if spec.hessian else None
        if spec.channel_stats:
            self.abs_sum = torch.zeros(in_features, dtype=torch.float64)
            self.abs_max = torch.zeros(in_features)
            self.sq_sum = torch.zeros(in_features, dtype=torch.float64)
        self._samples = torch.empty(spec.max_samples, in_features)
        self._gen = torch.Generator().manual_seed(seed)

    def has(self, name: str) -> bool:
        """Whether statistic ``name`` was collected (and at least one row seen)."""
        available = {
            "hessian": self.spec.hessian,
            "abs_mean": self.spec.channel_stats,
            "abs_max": self.spec.channel_stats,
            "sq_sum": self.spec.channel_stats,
            "samples": self.spec.max_samples > 0,
        }
        return self.n_rows > 0 and available[name]

    @torch.no_grad()
    def update(self, x: torch.Tensor) -> None:
        """Add a batch of inputs ``[..., in_features]``."""
        x = x.detach().reshape(-1, self.in_features).to("cpu", torch.float32)
        if self.xtx is not None:
            self.xtx.addmm_(x.t(), x)
        if self.spec.channel_stats:
            ax = x.abs()
            self.abs_sum += ax.sum(0, dtype=torch.float64)
            torch.maximum(self.abs_max, ax.amax(0), out=self.abs_max)
            self.sq_sum += (x.double() ** 2).sum(0)
        if self.spec.max_samples:
            self._reservoir(x)
        self.n_rows += x.shape[0]

    def _reservoir(self, x: torch.Tensor) -> None:
        # Algorithm R: row number t (0-based over all rows seen) replaces a uniform slot j ≤ t
        # when j < capacity, so every row seen so far is kept with equal probability.
        cap = self.spec.max_samples
        t = torch.arange(self.n_rows, self.n_rows + x.shape[0], dtype=torch.float64)
        j = (torch.rand(x.shape[0], generator=self._gen, dtype=torch.float64) * (t + 1)).long()
        j = torch.where(t < cap, t.long(), j)
        for i in torch.nonzero(j < cap).flatten().tolist():  # few after the reservoir fills
            self._samples[j[i]] = x[i]

    def hessian(self) -> torch.Tensor:
        """``H = 2 XᵀX / n`` (GPTQ's convention), a fresh tensor the caller may modify."""
        if self.xtx is None or self.n_rows == 0:
            raise ValueError("the Hessian was not collected (StatsSpec(hessian=True))")
        return self.xtx * (2.0 / self.n_rows)

    @property
    def abs_mean(self) -> torch.Tensor:
        """Per-input-channel ``mean |X_j|``."""
        return (self.abs_sum / max(self.n_rows, 1)).float()

    @property
    def col_norm(self) -> torch.Tensor:
        """Per-input-channel ``‖X_j‖₂`` over all rows seen (Wanda's activation norm)."""
        return self.sq_sum.sqrt().float()

    @property
    def samples(self) -> torch.Tensor:
        """The sampled input rows ``[min(n_rows, max_samples), in_features]``."""
        return self._samples[: min(self.n_rows, self.spec.max_samples)]


class CalibrationRecorder:
    """Context manager feeding each module's inputs into its own :class:`LayerStats`.

    >>> with CalibrationRecorder({"mlp.up": model.mlp.up}, spec) as rec:
    ...     model(batch)
    >>> rec.stats["mlp.up"].hessian()
    """

    def __init__(self, modules: Mapping[str, torch.nn.Module], spec: StatsSpec, seed: int = 0) -> None:
        self.modules = dict(modules)
        self.stats = {name: LayerStats(_in_features(m), spec, seed=seed) for name, m in self.modules.items()}
        self._handles: list[torch.utils.hooks.RemovableHandle] = []

    def __enter__(self) -> "CalibrationRecorder":
        for name, module in self.modules.items():
            stats = self.stats[name]
            self._handles.append(
                module.register_forward_pre_hook(lambda _m, args, s=stats: s.update(args[0]))
            )
        return self

    def __exit__(self, *exc: object) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()


def _in_features(module: torch.nn.Module) -> int:
    if hasattr(module, "in_features"):
        return int(module.in_features)
    raise TypeError(f"cannot tell the input width of {type(module).__name__}; give it in_features")
