"""W8A8: int8 absmax weights per output channel, int8 activations per token (dynamic).

Two optional refinements, both driven by calibration activations:

- **SmoothQuant** (Xiao et al., 2022): per input channel ``s_j = max|X_j|^α / max|W_j|^(1-α)``;
  the layer computes ``(x / s) · (W·s)ᵀ``, moving activation outliers into the weights where
  per-channel scales absorb them. ``alpha_grid=n`` picks α per layer from ``{0, 1/(n-1), ..., 1}``
  by the W8A8 output error on sampled calibration inputs (one α cannot suit layers whose
  activation outliers differ by orders of magnitude).
- **LLM.int8() outlier split** (Dettmers et al., 2022): input features whose calibration
  ``max|X_j|`` exceeds ``outlier_threshold`` stay in float (weights and activations); the rest go
  through the int8 product. Outlier activations are zeroed before the per-token scale is taken,
  so they no longer stretch it.

Layout: ``qweight`` int8 ``[N, K]`` (outlier columns zero), ``scale`` float32 ``[N]``,
optionally ``smooth`` float32 ``[K]``, ``outlier_idx`` int64 ``[k]`` and ``outlier_weight``
``[N, k]`` (float16) -- all in the smoothed coordinates.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Mapping

import torch
from tierlm.kernels.calibration import LayerStats
from tierlm.kernels.ops.int8_mm import QMAX, absmax_quantize
from tierlm.kernels.compressed_tensors import INT_QUANTIZED, ExportError, Scheme, int_args
from tierlm.kernels.quant.base import Kernel, QuantizedTensor, Quantizer



@dataclass(eq=False)
class Int8Tensor(QuantizedTensor):
    """W8A8 weight; :meth:`linear_reference` fake-quantizes activations per token."""

    format = "int8"

    qweight: torch.Tensor
    scale: torch.Tensor
    smooth: torch.Tensor | None = None
    outlier_idx: torch.Tensor | None = None
    outlier_weight: torch.Tensor | None = None

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.qweight.shape)  # type: ignore[return-value]

    def _smoothed(self) -> torch.Tensor:
        """Dequantized weight in the smoothed coordinates (outlier columns in float)."""
        w = self.qweight.to(torch.float32) * self.scale.unsqueeze(1)
        if self.outlier_idx is not None:
            w[:, self.outlier_idx] = self.outlier_weight.to(torch.float32)
        return w

    def dequantize(self) -> torch.Tensor:
        w = self._smoothed()
        return w if self.smooth is None else w / self.smooth

    def dequantize_rows(self, rows: torch.Tensor) -> torch.Tensor:
        flat = rows.reshape(-1).to(torch.int64)
        w = self.qweight[flat].to(torch.float32) * self.scale[flat].unsqueeze(1)
        if self.outlier_idx is not None:
            w[:, self.outlier_idx] = self.outlier_weight[flat].to(torch.float32)
        if self.smooth is not None:
            w = w / self.smooth
        return w.reshape(*rows.shape, -1)

    def split_input(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``x [M, K]`` -> (smoothed activations with outlier features zeroed, outlier features)."""
        if self.smooth is not None:
            x = x / self.smooth
        if self.outlier_idx is None:
            return x, None
        outliers = x[:, self.outlier_idx]
        x = x.clone()
        x[:, self.outlier_idx] = 0
        return x, outliers

    def outlier_product(self, outliers: torch.Tensor | None) -> torch.Tensor | float:
        """The float part of the split product (0 without outliers)."""
        if outliers is None:
            return 0.0
        return outliers @ self.outlier_weight.to(outliers.dtype).t()

    def linear_reference(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        x = x.reshape(-1, shape[-1]).to(torch.float32)
        inliers, outliers = self.split_input(x)
        q, s = absmax_quantize(inliers)
        w = self.qweight.to(torch.float32) * self.scale.unsqueeze(1)
        y = (q.to(torch.float32) * s) @ w.t() + self.outlier_product(outliers)
        return y.reshape(*shape[:-1], -1)

    def linear_rows(self, x: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        x = x.reshape(-1, shape[-1]).to(torch.float32)
        inliers, outliers = self.split_input(x)
        q, s = absmax_quantize(inliers)  # per token: the same whichever outputs are read
        w = self.qweight[rows].to(torch.float32) * self.scale[rows].unsqueeze(1)
        y = (q.to(torch.float32) * s) @ w.t()
        if outliers is not None:
            y = y + outliers @ self.outlier_weight[rows].to(torch.float32).t()
        return y.reshape(*shape[:-1], -1)

    def kernel(self, device: torch.device, int4_accuracy_level: int = 4) -> Kernel | None:
        """CPU: onnxruntime's ``MatMulInteger`` (MLAS; faster at decode's small batches, see
        :mod:`tierlm.kernels.ops.ort_nbits`), else ``torch._int_mm`` (oneDNN, VNNI); CUDA:
        ``torch._int_mm`` where its shape rules allow. Every one computes the reference's
        numerics, so ``int4_accuracy_level`` does not apply."""
        from tierlm.kernels.ops.int8_mm import Int8MatMul, cuda_supports
        from tierlm.kernels.ops.ort_nbits import Int8MatMulInteger, ort_available

        if device.type == "cpu":
            return Int8MatMulInteger(self) if ort_available() else Int8MatMul(self, device)
        if device.type == "cuda" and cuda_supports(self):
            return Int8MatMul(self, device)
        return None

    @classmethod
    def cat_rows(cls, parts: Sequence[QuantizedTensor]) -> Int8Tensor | None:
        """Without outlier columns and with one smoothing vector (or none): rows side by side."""
        first = parts[0]
        joinable = all(
            p.outlier_idx is None
            and (p.smooth is None) == (first.smooth is None)
            and (p.smooth is None or torch.equal(p.smooth, first.smooth))
            for p in parts
        )
        if not joinable:
            return None
        return cls(torch.cat([p.qweight for p in parts]), torch.cat([p.scale for p in parts]), first.smooth)

    def take_rows(self, rows: torch.Tensor) -> Int8Tensor:
        """Rows of the codes, scales and outlier weights; smoothing and outlier columns are per
        input feature and stay whole."""
        rows = rows.to(torch.int64)
        return Int8Tensor(
            self.qweight[rows], self.scale[rows], self.smooth, self.outlier_idx,
            None if self.outlier_weight is None else self.outlier_weight[rows],
        )

    def to_compressed_tensors(self, name: str) -> tuple[Scheme, dict[str, torch.Tensor]]:
        """``int-quantized`` W8A8: per-output-channel symmetric int8 weights, dynamic per-token
        int8 activations, run by vLLM's ``CPUInt8ScaledMMLinearKernel`` (oneDNN). Our
        ``qweight [N, K]`` is ``weight``, our ``scale [N]`` is ``weight_scale [N, 1]``."""
        if self.smooth is not None:
            raise ExportError(f"{name}: SmoothQuant scales have no place in vLLM's fused linears")
        if self.outlier_idx is not None:
            raise ExportError(f"{name}: LLM.int8() outlier columns have no vLLM kernel")
        scheme = Scheme(INT_QUANTIZED, int_args(8, True, "channel"), int_args(8, True, "token", dynamic=True))
        return scheme, {"weight": self.qweight.contiguous(), "weight_scale": self.scale.to(torch.float32).reshape(-1, 1)}

    @classmethod
    def reads_compressed_tensors(cls, group: Mapping[str, Any]) -> bool:
        weights, acts = group["weights"], group.get("input_activations") or {}
        return (
            group.get("format") == INT_QUANTIZED
            and weights["num_bits"] == 8
            and weights["strategy"] == "channel"
            and acts.get("strategy") == "token"
            and bool(acts.get("dynamic"))
        )

    @classmethod
    def from_compressed_tensors(cls, parts: Mapping[str, torch.Tensor], group: Mapping[str, Any]) -> "Int8Tensor":
        return cls(qweight=parts["weight"], scale=parts["weight_scale"].reshape(-1).to(torch.float32))

    def tensors(self) -> dict[str, torch.Tensor]:
        out = {"qweight": self.qweight, "scale": self.scale}
        if self.smooth is not None:
            out["smooth"] = self.smooth
        if self.outlier_idx is not None:
            out["outlier_idx"] = self.outlier_idx
            out["outlier_weight"] = self.outlier_weight
        return out

    def metadata(self) -> dict[str, Any]:
        return {"activations": "int8-per-token"}

    @classmethod
    def from_parts(cls, tensors: Mapping[str, torch.Tensor], meta: Mapping[str, Any]) -> "Int8Tensor":
        return cls(
            qweight=tensors["qweight"],
            scale=tensors["scale"],
            smooth=tensors.get("smooth"),
            outlier_idx=tensors.get("outlier_idx"),
            outlier_weight=tensors.get("outlier_weight"),
        )


class Int8Quantizer(Quantizer):
    """Absmax int8; ``smoothquant_alpha`` and ``outlier_threshold`` need calibration ``abs_max``."""

    name = "int8"

    def __init__(
        self,
        smoothquant_alpha: float | None = None,
        outlier_threshold: float | None = None,
        alpha_grid: int | None = None,
    ) -> None:
        if smoothquant_alpha is not None and not 0.0 <= smoothquant_alpha <= 1.0:
            raise ValueError("smoothquant_alpha must lie in [0, 1]")
        if alpha_grid is not None and (alpha_grid < 2 or smoothquant_alpha is not None):
            raise ValueError("alpha_grid needs at least 2 points and replaces a fixed smoothquant_alpha")
        self.smoothquant_alpha = smoothquant_alpha
        self.outlier_threshold = outlier_threshold
        self.alpha_grid = alpha_grid
        if smoothquant_alpha is not None or outlier_threshold is not None:
            self.needs = frozenset({"abs_max"})
        if alpha_grid is not None:
            self.needs = frozenset({"abs_max", "samples"})

    @torch.no_grad()
    def quantize(self, weight: torch.Tensor, calib: LayerStats | None = None) -> Int8Tensor:
        if self.alpha_grid is None:
            return self._quantize(weight, calib, self.smoothquant_alpha)
        x = self._require(calib).samples
        reference = x @ weight.detach().to(torch.float32).t()
        candidates = [self._quantize(weight, calib, i / (self.alpha_grid - 1)) for i in range(self.alpha_grid)]
        return min(candidates, key=lambda qt: float((qt.linear_reference(x) - reference).pow(2).sum()))

    def _quantize(self, weight: torch.Tensor, calib: LayerStats | None, alpha: float | None) -> Int8Tensor:
        w = weight.detach().to(torch.float32)
        smooth = outlier_idx = None
        if self.needs:
            act_max = self._require(calib).abs_max.clone()
            if self.outlier_threshold is not None:
                outlier_idx = torch.nonzero(act_max > self.outlier_threshold).flatten()
                if outlier_idx.numel() == 0:
                    outlier_idx = None
            if alpha is not None:
                w_max = w.abs().amax(0).clamp(min=1e-5)
                smooth = (act_max.clamp(min=1e-5).pow(alpha) / w_max.pow(1 - alpha)).clamp(min=1e-5)
                w = w * smooth
        outlier_weight = None
        if outlier_idx is not None:
            outlier_weight = w[:, outlier_idx].to(torch.float16)
            w = w.clone()
            w[:, outlier_idx] = 0  # the int8 scale ignores what stays in float
        q, scale = absmax_quantize(w)
        return Int8Tensor(q, scale.squeeze(1), smooth, outlier_idx, outlier_weight)

    def config(self) -> dict[str, Any]:
        return {
            "method": self.name,
            "smoothquant_alpha": self.smoothquant_alpha,
            "outlier_threshold": self.outlier_threshold,
            "alpha_grid": self.alpha_grid,
        }
