"""Hessian preparation and the inverse-Cholesky factor used by GPTQ (and SparseGPT).

Both methods minimise ``‖XWᵀ - XŴᵀ‖²`` one input column at a time; the error of column ``i`` is
spread over the not-yet-processed columns through row ``i`` of ``U``, the upper Cholesky factor
of ``H⁻¹`` (``UᵀU = H⁻¹``), with ``H = 2XᵀX/n`` from :class:`~tierlm.kernels.calibration.LayerStats`.
"""

from __future__ import annotations

import torch


def prepare_hessian(h: torch.Tensor, weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Handle dead input channels (never active in calibration) in place-free fashion.

    A zero diagonal entry makes ``H`` singular; such a channel's weights cannot affect the
    calibration output, so they are zeroed and the diagonal set to 1 (GPTQ's convention).
    Returns ``(H, weight)`` as new float32 tensors.
    """
    h = h.to(torch.float32).clone()
    weight = weight.to(torch.float32).clone()
    dead = torch.diag(h) == 0
    h[dead, dead] = 1.0
    weight[:, dead] = 0.0
    return h, weight


def inverse_cholesky(h: torch.Tensor, percdamp: float = 0.01, max_tries: int = 6) -> torch.Tensor:
    """Upper Cholesky factor ``U`` of ``(H + λI)⁻¹`` with ``λ = percdamp · mean(diag H)``.

    Calibration Hessians of real layers are often numerically rank-deficient; when a
    factorisation fails the damping is raised tenfold and retried rather than giving up.
    """
    if not 0 < percdamp:
        raise ValueError("percdamp must be positive")
    mean_diag = torch.diag(h).mean()
    eye = torch.eye(h.shape[0], dtype=h.dtype, device=h.device)
    damp = percdamp
    for _ in range(max_tries):
        lower, info = torch.linalg.cholesky_ex(h + damp * mean_diag * eye)
        if info == 0:
            h_inv = torch.cholesky_inverse(lower)
            upper, info = torch.linalg.cholesky_ex(h_inv, upper=True)
            if info == 0:
                return upper
        damp *= 10
    raise torch.linalg.LinAlgError(f"Hessian not positive definite even with damping {damp / 10:g}")
