"""nn.Modules that run quantized weights: a linear layer, an embedding, and swap helpers.

``QuantLinear`` picks its kernel from the weight's format: int8 (W8A8) through ``torch._int_mm``
(:mod:`tierlm.kernels.ops.int8_mm`), int3/int4 group-wise through onnxruntime's ``MatMulNBits``
(:mod:`tierlm.kernels.ops.ort_nbits`), anything else (NF4) through the reference path, which
dequantizes the weight on every call. ``backend="reference"`` forces the reference everywhere
(tests compare the two); inputs on an accelerator always take the reference path, since the fast
kernels here are CPU kernels.

``QuantEmbedding`` holds a ``[vocab, hidden]`` table as a quantized tensor; its
:meth:`~QuantEmbedding.tied_output` is a ``QuantLinear`` over the *same* tensor, which is how a
tied output layer (Gemma 3's 262k × 640) gets the fast path without a second copy.
"""

from __future__ import annotations

from typing import Callable, Literal

import torch
from torch import nn

from tierlm.kernels.calibration import LayerStats
from tierlm.kernels.quant.base import QuantizedTensor, Quantizer
from tierlm.kernels.quant.group import GroupQuantTensor
from tierlm.kernels.quant.int8 import Int8Tensor

Backend = Literal["auto", "fast", "reference"]
Kernel = Callable[[torch.Tensor], torch.Tensor]


def fast_kernel(qt: QuantizedTensor, int4_accuracy_level: int = 4) -> Kernel | None:
    """The fast CPU kernel for ``qt``'s format, or None when there is none (or it is not installed).

    ``int4_accuracy_level``: 4 = MLAS quantizes activations to int8 per block (fastest, adds
    ~1-3% relative output error on outlier-heavy inputs), 0 = float activations (exact to the
    reference, 2-3x slower at batch 1); see bench/kernels_matmul.py.
    """
    if isinstance(qt, Int8Tensor):
        from tierlm.kernels.ops.int8_mm import Int8MatMul

        return Int8MatMul(qt)
    if isinstance(qt, GroupQuantTensor):
        from tierlm.kernels.ops.ort_nbits import ORT_BLOCK_SIZES, NBitsMatMul, ort_available

        if ort_available() and qt.group_size in ORT_BLOCK_SIZES:
            return NBitsMatMul(qt, accuracy_level=int4_accuracy_level)
    return None


class QuantLinear(nn.Module):
    """Drop-in for ``nn.Linear`` over a :class:`QuantizedTensor` weight."""

    def __init__(
        self,
        weight: QuantizedTensor,
        bias: torch.Tensor | None = None,
        backend: Backend = "auto",
        int4_accuracy_level: int = 4,
    ) -> None:
        super().__init__()
        self.qweight = weight
        self.int4_accuracy_level = int4_accuracy_level
        self.out_features, self.in_features = weight.shape
        self.bias = None if bias is None else nn.Parameter(bias.detach().to(torch.float32), requires_grad=False)
        self._kernel: Kernel | None = None
        self.backend = backend

    @property
    def backend(self) -> Backend:
        """``auto`` (fast kernel when one exists), ``fast`` (required) or ``reference``."""
        return self._backend

    @backend.setter
    def backend(self, value: Backend) -> None:
        if value not in ("auto", "fast", "reference"):
            raise ValueError(f"backend must be auto, fast or reference, got {value!r}")
        # Kernels are built here rather than on the first call so that a missing fast path is an
        # error at set-up time, and so that the (one-off) ORT session build is not in a timing.
        self._kernel = None if value == "reference" else fast_kernel(self.qweight, self.int4_accuracy_level)
        if value == "fast" and self._kernel is None:
            raise RuntimeError(f"no fast kernel for format {self.qweight.format!r} here")
        self._backend = value

    @classmethod
    def from_linear(
        cls, linear: nn.Linear, quantizer: Quantizer, calib: LayerStats | None = None, backend: Backend = "auto"
    ) -> "QuantLinear":
        """Quantize ``linear.weight`` with ``quantizer`` and keep its bias in float."""
        return cls(quantizer.quantize(linear.weight.detach(), calib), linear.bias, backend)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        x2 = x.reshape(-1, shape[-1])
        if self._kernel is not None and x.device.type == "cpu":
            y = self._kernel(x2)
        else:
            y = self.qweight.linear_reference(x2.to(torch.float32))
        if self.bias is not None:
            y = y + self.bias.to(y.device)
        return y.reshape(*shape[:-1], self.out_features).to(x.dtype)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, format={self.qweight.format}, backend={self.backend}"


class QuantEmbedding(nn.Module):
    """Embedding lookup from a quantized ``[vocab, hidden]`` table (rows dequantized on demand).

    ``scale`` multiplies the looked-up rows; Gemma's embedding module multiplies by
    ``sqrt(hidden)`` inside its forward, and :meth:`from_embedding` carries that factor over.
    """

    def __init__(self, weight: QuantizedTensor, scale: float = 1.0, padding_idx: int | None = None) -> None:
        super().__init__()
        self.qweight = weight
        self.num_embeddings, self.embedding_dim = weight.shape
        self.scale = scale
        self.padding_idx = padding_idx

    @classmethod
    def from_embedding(cls, emb: nn.Embedding, quantizer: Quantizer) -> "QuantEmbedding":
        """Quantize ``emb.weight`` row-wise (rows are output channels for every format here)."""
        scale = getattr(emb, "embed_scale", 1.0)
        scale = float(scale.item() if torch.is_tensor(scale) else scale)
        return cls(quantizer.quantize(emb.weight.detach()), scale, emb.padding_idx)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        rows = self.qweight.dequantize_rows(ids.cpu()).to(ids.device)
        return rows * self.scale if self.scale != 1.0 else rows

    def tied_output(self, backend: Backend = "auto") -> QuantLinear:
        """An output layer ``h -> h @ tableᵀ`` sharing this table's storage (no scale applied)."""
        return QuantLinear(self.qweight, None, backend)


def quantize_linears(
    model: nn.Module,
    choose: Callable[[str, nn.Linear], Quantizer | None],
    calib: dict[str, LayerStats] | None = None,
    backend: Backend = "auto",
) -> dict[str, QuantLinear]:
    """Replace each ``nn.Linear`` for which ``choose(name, module)`` returns a quantizer.

    ``calib`` maps module names to their statistics (e.g. a :class:`CalibrationRecorder`'s
    ``stats``). Returns the new modules by name. A layer-by-layer pipeline calls this on one
    decoder block at a time, right after recording that block's inputs.
    """
    chosen = []
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear):
            quantizer = choose(name, module)
            if quantizer is not None:
                chosen.append((name, module, quantizer))
    replaced = {}
    for name, module, quantizer in chosen:
        stats = None if calib is None else calib.get(name)
        new = QuantLinear.from_linear(module, quantizer, stats, backend)
        parent_name, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent_name) if parent_name else model, child, new)
        replaced[name] = new
    return replaced
