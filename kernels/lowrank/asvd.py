"""Activation-aware SVD with truncation-aware whitening (SVD-LLM, Wang et al., 2024).

The layer's output error over calibration inputs ``X`` is
``‖X(W - W')ᵀ‖² = ‖(W - W')·S‖²`` for any ``S`` with ``S·Sᵀ = XᵀX``; with ``S`` the Cholesky
factor, the SVD of ``W·S`` truncated at rank ``r`` and mapped back by ``S⁻¹`` is the *exact*
minimiser of that output error (Eckart-Young in whitened coordinates), and each discarded
``σ_i²`` is exactly the output error it adds. ASVD (Yuan et al., 2023) scales columns by a
diagonal ``mean|X_j|^α`` instead; the Cholesky factor subsumes it, so only SVD-LLM's form is
implemented. ``XᵀX`` is the ``hessian`` statistic; it is damped by ``percdamp · mean(diag)``
so channels never seen in calibration keep a well-posed (plain-SVD-like) treatment.
"""

from __future__ import annotations

from typing import Any

import torch
from tierlm.kernels.calibration import LayerStats
from tierlm.kernels.lowrank.base import Decomposition, Factorizer


class WhitenedSVDFactorizer(Factorizer):
    name = "asvd"
    needs = frozenset({"hessian"})

    def __init__(self, percdamp: float = 0.01, max_tries: int = 6) -> None:
        if percdamp <= 0:
            raise ValueError("percdamp must be positive")
        self.percdamp = percdamp
        self.max_tries = max_tries

    @torch.no_grad()
    def decompose(self, weight: torch.Tensor, calib: LayerStats | None = None) -> Decomposition:
        h = self._require(calib).hessian().double()
        s = self._cholesky(h)
        u, sigma, vh = torch.linalg.svd(weight.detach().double() @ s, full_matrices=False)
        # unwhiten = S⁻¹, via a triangular solve rather than an explicit inverse.
        eye = torch.eye(s.shape[0], dtype=s.dtype)
        unwhiten = torch.linalg.solve_triangular(s, eye, upper=False)
        return Decomposition(u.float(), sigma.float(), vh.float(), unwhiten.float())

    def _cholesky(self, h: torch.Tensor) -> torch.Tensor:
        mean_diag = torch.diag(h).mean().clamp(min=1e-12)
        eye = torch.eye(h.shape[0], dtype=h.dtype)
        damp = self.percdamp
        for _ in range(self.max_tries):
            lower, info = torch.linalg.cholesky_ex(h + damp * mean_diag * eye)
            if info == 0:
                return lower
            damp *= 10
        raise torch.linalg.LinAlgError(
            f"calibration covariance not positive definite even with damping {damp / 10:g}"
        )

    def config(self) -> dict[str, Any]:
        return {**super().config(), "percdamp": self.percdamp}
