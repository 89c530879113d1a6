"""nn.Modules that run quantized weights: a linear layer, an embedding, and swap helpers.

``QuantLinear`` picks its kernel from the weight's format and the input's device (see
:func:`fast_kernel`): int8 (W8A8) through ``torch._int_mm`` on CPU and CUDA, int3/int4
group-wise through onnxruntime's ``MatMulNBits`` on CPU and torch's tinygemm on CUDA, anything
else (NF4) through the reference path, which dequantizes the weight on every call.
``backend="reference"`` forces the reference everywhere (tests compare the two).

``QuantEmbedding`` holds a ``[vocab, hidden]`` table as a quantized tensor; its
:meth:`~QuantEmbedding.tied_output` is a ``QuantLinear`` over the *same* tensor, which is how a
tied output layer (Gemma 3's 262k × 640) gets the fast path without a second copy.
"""

from __future__ import annotations

from typing import Callable, Literal

import torch
from torch import nn

from tierlm.kernels.calibration import LayerStats
from tierlm.kernels.decoder import set_module
from tierlm.kernels.quant.base import Kernel, QuantizedTensor, Quantizer

Backend = Literal["auto", "fast", "reference"]


def fast_kernel(qt: QuantizedTensor, device: torch.device | str = "cpu", int4_accuracy_level: int = 4) -> Kernel | None:
    """The fast kernel for ``qt``'s format on ``device``, or None when there is none here.

    Each format brings its own (:meth:`QuantizedTensor.kernel`). CPU: int8 -> onnxruntime
    ``MatMulInteger`` (``torch._int_mm`` without onnxruntime); int3/int4 -> onnxruntime ``MatMulNBits``, where ``int4_accuracy_level`` 4 lets MLAS quantize
    activations to int8 per block (fastest, adds ~1-3% relative output error on outlier-heavy
    inputs) and 0 keeps them in float (exact to the reference, 2-3x slower at batch 1; see
    bench/kernels_matmul.py). CUDA: int8 -> ``torch._int_mm``; int3/int4 -> torch's tinygemm.
    """
    return qt.kernel(torch.device(device), int4_accuracy_level)


class QuantLinear(nn.Module):
    """Drop-in for ``nn.Linear`` over a :class:`QuantizedTensor` weight.

    The stored tensor stays where it was built (CPU); the first call on another device builds
    that device's kernel (or, for the reference path, a device copy of the tensor) and keeps it.
    """

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
        self.bias = (
            None if bias is None else nn.Parameter(bias.detach().to(torch.float32), requires_grad=False)
        )
        self._kernels: dict[torch.device, Kernel | None] = {}
        self._device_weights: dict[torch.device, QuantizedTensor] = {}
        self.backend = backend

    @property
    def backend(self) -> Backend:
        """``auto`` (fast kernel when one exists), ``fast`` (required) or ``reference``."""
        return self._backend

    @backend.setter
    def backend(self, value: Backend) -> None:
        if value not in ("auto", "fast", "reference"):
            raise ValueError(f"backend must be auto, fast or reference, got {value!r}")
        previous = getattr(self, "_backend", "reference")
        self._backend = value
        self._kernels.clear()
        # The home-device kernel is built now rather than on the first call so that a missing
        # fast path is an error at set-up time and the one-off ORT session build stays out of
        # timings.
        try:
            self._kernel_for(self.qweight.device)
        except RuntimeError:
            self._backend = previous
            self._kernels.clear()
            raise

    def _kernel_for(self, device: torch.device) -> Kernel | None:
        if device not in self._kernels:
            kernel = (
                None
                if self._backend == "reference"
                else fast_kernel(self.qweight, device, self.int4_accuracy_level)
            )
            if self._backend == "fast" and kernel is None:
                raise RuntimeError(f"no fast kernel for format {self.qweight.format!r} on {device}")
            self._kernels[device] = kernel
        return self._kernels[device]

    @property
    def home_kernel(self) -> Kernel | None:
        """The kernel on the weight's own device (None: the reference path, or released)."""
        return self._kernels.get(self.qweight.device)

    def _weight_on(self, device: torch.device) -> QuantizedTensor:
        if device == self.qweight.device:
            return self.qweight
        if device not in self._device_weights:
            self._device_weights[device] = self.qweight.to(device)
        return self._device_weights[device]

    @classmethod
    def from_linear(
        cls,
        linear: nn.Linear,
        quantizer: Quantizer,
        calib: LayerStats | None = None,
        backend: Backend = "auto",
    ) -> "QuantLinear":
        """Quantize ``linear.weight`` with ``quantizer`` and keep its bias in float."""
        return cls(quantizer.quantize(linear.weight.detach().cpu(), calib), linear.bias, backend)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        x2 = x.reshape(-1, shape[-1])
        kernel = self._kernel_for(x.device)
        if kernel is not None:
            y = kernel(x2)
        else:
            y = self._weight_on(x.device).linear_reference(x2.to(torch.float32))
        if self.bias is not None:
            y = y + self.bias.to(y.device)
        return y.reshape(*shape[:-1], self.out_features).to(x.dtype)

    def forward_rows(self, x: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        """Outputs ``rows`` only (``[..., len(rows)]``), with the reference path's numerics, from
        those rows of the weight: what an output layer needs when a request reads a few tokens'
        logits (:meth:`QuantizedTensor.linear_rows`)."""
        y = self._weight_on(x.device).linear_rows(x.to(torch.float32), rows.to(x.device))
        if self.bias is not None:
            y = y + self.bias.to(y.device)[rows]
        return y.to(x.dtype)

    def release_kernels(self) -> None:
        """Drop the built kernels (their packed copies of the weight); the next call rebuilds one.
        For a module whose product another kernel now computes (:func:`fuse_linears`)."""
        self._kernels.clear()

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, "
            f"format={self.qweight.format}, backend={self.backend}"
        )


def linear_rows(linear: nn.Module, x: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """``linear(x)[..., rows]`` computed from those rows of the weight alone (a dense
    ``nn.Linear`` or a :class:`QuantLinear`)."""
    if isinstance(linear, QuantLinear):
        return linear.forward_rows(x, rows)
    bias = None if linear.bias is None else linear.bias[rows]
    return torch.nn.functional.linear(x, linear.weight[rows], bias)


def rows_of(linear: nn.Module, rows: torch.Tensor) -> nn.Module:
    """A linear layer computing ``linear(x)[..., rows]``, built once from those rows of the
    weight: in the weight's own format where it can be cut by rows (the same fast kernel then
    runs it), else dense float32 rows."""
    bias = None if linear.bias is None else linear.bias.detach()[rows]
    if isinstance(linear, QuantLinear):
        taken = linear.qweight.take_rows(rows)
        if taken is not None:
            return QuantLinear(taken, bias, linear.backend, linear.int4_accuracy_level)
        weight = linear.qweight.dequantize_rows(rows)
    else:
        weight = linear.weight.detach()[rows]  # advanced indexing: already a copy
    return _frozen_linear(weight, bias)


def _frozen_linear(weight: torch.Tensor, bias: torch.Tensor | None) -> nn.Linear:
    """An ``nn.Linear`` holding ``weight`` ([out, in]) and ``bias`` themselves, no gradients
    (built on the meta device, so no throwaway initialisation is allocated)."""
    linear = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None, device="meta")
    linear.weight = nn.Parameter(weight, requires_grad=False)
    if bias is not None:
        linear.bias = nn.Parameter(bias, requires_grad=False)
    return linear


def _joined_bias(modules: list[nn.Module], sizes: list[int]) -> torch.Tensor | None:
    biases = [m.bias for m in modules]
    present = [b for b in biases if b is not None]
    if not present:
        return None
    return torch.cat([b.detach() if b is not None else present[0].new_zeros(n) for b, n in zip(biases, sizes)])


class FusedLinears:
    """Linears that read the same input (q/k/v, gate/up) run as one product: calling it returns
    each one's output. Not an ``nn.Module``: a runtime view of modules the model keeps under
    their own names (state dicts and artifacts never see it)."""

    def __init__(self, linear: nn.Module, sizes: list[int]) -> None:
        self.linear = linear
        self.sizes = sizes

    def __call__(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return self.linear(x).split(self.sizes, dim=-1)


def fuse_linears(modules: list[nn.Module]) -> FusedLinears | None:
    """One product for ``modules`` (same input width), or None where their weights cannot be
    joined: dense ``nn.Linear``s always can, :class:`QuantLinear`s when their format joins the
    rows (:meth:`QuantizedTensor.cat_rows`). A dense fusion leaves each module's weight a view
    of the joined one (no second copy); a quantized one drops the modules' own kernels."""
    sizes = [m.out_features for m in modules]
    bias = _joined_bias(modules, sizes)
    if all(type(m) is nn.Linear for m in modules):
        joined = _frozen_linear(torch.cat([m.weight.detach() for m in modules]), bias)
        for module, view in zip(modules, joined.weight.split(sizes)):
            module.weight = nn.Parameter(view, requires_grad=False)
        return FusedLinears(joined, sizes)
    if not all(isinstance(m, QuantLinear) for m in modules) or len({type(m.qweight) for m in modules}) != 1:
        return None
    first = modules[0]
    weight = type(first.qweight).cat_rows([m.qweight for m in modules])
    if weight is None:
        return None
    joined = QuantLinear(weight, bias, first.backend, first.int4_accuracy_level)
    for module in modules:
        module.release_kernels()
    return FusedLinears(joined, sizes)


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
        # Lookups gather a few rows: done where the table lives, then moved.
        rows = self.qweight.dequantize_rows(ids.to(self.qweight.device)).to(ids.device)
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
        set_module(model, name, new)
        replaced[name] = new
    return replaced
