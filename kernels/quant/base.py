"""The quantization interface: a ``Quantizer`` turns a dense weight into a ``QuantizedTensor``.

Every method lives in its own module; :data:`tierlm.kernels.methods.QUANTIZERS` names them, so a
recipe (or the compression pipeline) can say ``QUANTIZERS.build("gptq", bits=4, group_size=128)``
and ask the object which calibration statistics it needs (``Quantizer.needs``) before running
any data.

A ``QuantizedTensor`` stands for a 2-D weight ``[out_features, in_features]`` (the nn.Linear
layout; an embedding table ``[vocab, hidden]`` is the same shape as its tied output layer). A
stored format owns everything about itself: how to dequantize (the reference every fast kernel
is tested against), how to store itself as plain tensors plus a small JSON-able metadata dict
(an artifact is a safetensors file plus ``tierlm_compression.json``), its fast kernel per
device (:meth:`QuantizedTensor.kernel`) and, where vLLM can run it, its compressed-tensors
layout (:meth:`QuantizedTensor.to_compressed_tensors`). Adding a format adds one class here
and one entry in :data:`tierlm.kernels.methods.FORMATS`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, ClassVar, Mapping

import torch

from tierlm.kernels.calibration import require_stats
from tierlm.kernels.compressed_tensors import ExportError, Scheme

if TYPE_CHECKING:
    from tierlm.kernels.calibration import LayerStats
    from tierlm.kernels.lowrank.tensor import LowRankTensor

#: A fast matmul ``x [M, K] -> [M, N] float32`` built for one weight on one device.
Kernel = Callable[[torch.Tensor], torch.Tensor]


class QuantizedTensor(ABC):
    """A compressed stand-in for a dense ``[out_features, in_features]`` weight."""

    #: Storage format name written into metadata; selects the class when loading (FORMATS).
    format: ClassVar[str]

    @property
    @abstractmethod
    def shape(self) -> tuple[int, int]:
        """``(out_features, in_features)`` of the dense weight this tensor replaces."""

    @abstractmethod
    def dequantize(self) -> torch.Tensor:
        """The float32 weight this tensor represents, in the original input coordinates."""

    @abstractmethod
    def tensors(self) -> dict[str, torch.Tensor]:
        """The stored tensors by name (no prefix). Only these count toward :attr:`nbytes`."""

    @abstractmethod
    def metadata(self) -> dict[str, Any]:
        """JSON-able parameters needed to rebuild the object from :meth:`tensors` (no ``format``)."""

    @classmethod
    @abstractmethod
    def from_parts(cls, tensors: Mapping[str, torch.Tensor], meta: Mapping[str, Any]) -> "QuantizedTensor":
        """Rebuild from :meth:`tensors` and :meth:`metadata` output."""

    def dequantize_rows(self, rows: torch.Tensor) -> torch.Tensor:
        """Dequantized rows ``rows`` (any integer shape) -> ``[*rows.shape, in_features]``.

        Embedding lookups use this; formats override it to avoid dequantizing the whole table.
        """
        return self.dequantize()[rows]

    def linear_reference(self, x: torch.Tensor) -> torch.Tensor:
        """``x @ Wᵀ`` with exactly the numerics the fast kernels implement, computed slowly.

        Weight-only formats just use :meth:`dequantize`; formats that also quantize activations
        (W8A8) override this to fake-quantize ``x`` the same way.
        """
        return torch.nn.functional.linear(x, self.dequantize().to(x.dtype))

    def linear_rows(self, x: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        """Outputs ``rows`` of :meth:`linear_reference` alone (``[..., len(rows)]``), from those
        rows of the weight: what an output layer needs when a request reads a few tokens."""
        return x @ self.dequantize_rows(rows).to(x.dtype).t()

    def to(self, device: torch.device | str) -> "QuantizedTensor":
        """A copy with every stored tensor on ``device`` (dequantization then runs there)."""
        tensors = {k: v.to(device) for k, v in self.tensors().items()}
        return type(self).from_parts(tensors, self.metadata())

    @property
    def device(self) -> torch.device:
        """Where the stored tensors live."""
        return next(iter(self.tensors().values())).device

    @property
    def nbytes(self) -> int:
        """Bytes of all stored tensors (what the artifact pays for this weight)."""
        return sum(t.numel() * t.element_size() for t in self.tensors().values())

    def to_state_dict(self, prefix: str) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        """``({prefix.name: tensor}, metadata)``; metadata carries ``format`` for loading."""
        state = {f"{prefix}.{name}": t.contiguous() for name, t in self.tensors().items()}
        return state, {"format": self.format, **self.metadata()}

    def kernel(self, device: torch.device, int4_accuracy_level: int = 4) -> Kernel | None:
        """This format's fast matmul on ``device``, or None where it has none (the module then
        runs :meth:`linear_reference`). ``int4_accuracy_level`` is the int4 CPU kernels' knob,
        see :class:`~tierlm.kernels.ops.ort_nbits.NBitsMatMul`."""
        return None

    def kernel_with_lowrank(
        self, device: torch.device, lowrank: "LowRankTensor", int4_accuracy_level: int = 4
    ) -> Kernel | None:
        """One kernel for ``self`` plus a low-rank term ``(x · Rᵀ) · Lᵀ`` (a composite layer), or
        None where this format has none; the composite then adds two kernels' outputs."""
        return None

    @classmethod
    def cat_rows(cls, parts: Sequence["QuantizedTensor"]) -> "QuantizedTensor | None":
        """One tensor whose output rows are ``parts``' rows in order, or None where this format
        cannot join them (different settings, or no such layout).

        Linears that read the same input (q/k/v, gate/up) then run as one product: one kernel
        call instead of several. ``parts`` are all of this class. The result is a runtime form
        (it need not keep a compact storage layout such as a sparse encoding); its product is
        the parts' products side by side.
        """
        return None

    def take_rows(self, rows: torch.Tensor) -> "QuantizedTensor | None":
        """A tensor of ``rows`` of this one (output rows, in that order) in this format, or None
        where the format cannot cut its storage by rows (a caller then dequantizes them)."""
        return None

    def to_compressed_tensors(self, name: str) -> tuple[Scheme, dict[str, torch.Tensor]]:
        """The compressed-tensors scheme and tensors (names without the module prefix) that
        vLLM runs for this weight; :class:`ExportError` says why a format or setting cannot."""
        raise ExportError(f"{name}: format {self.format!r} has no vLLM CPU kernel")

    @classmethod
    def reads_compressed_tensors(cls, group: Mapping[str, Any]) -> bool:
        """Whether a compressed-tensors ``config_groups`` entry is this format's scheme."""
        return False

    @classmethod
    def from_compressed_tensors(cls, parts: Mapping[str, torch.Tensor], group: Mapping[str, Any]) -> "QuantizedTensor":
        """Inverse of :meth:`to_compressed_tensors` (for a group :meth:`reads_compressed_tensors`)."""
        raise NotImplementedError(f"format {cls.format!r} reads no compressed-tensors scheme")


class Quantizer(ABC):
    """One quantization method with its settings: ``quantize(weight, calib) -> QuantizedTensor``."""

    #: Name used by recipes (:data:`tierlm.kernels.methods.QUANTIZERS`).
    name: ClassVar[str]
    #: Calibration statistics the method reads from :class:`~tierlm.kernels.calibration.LayerStats`
    #: (any of ``"hessian"``, ``"abs_mean"``, ``"abs_max"``, ``"samples"``); empty = data-free.
    needs: ClassVar[frozenset[str]] = frozenset()

    @abstractmethod
    def quantize(self, weight: torch.Tensor, calib: "LayerStats | None" = None) -> QuantizedTensor:
        """Quantize a ``[out_features, in_features]`` weight."""

    @abstractmethod
    def config(self) -> dict[str, Any]:
        """JSON-able settings (what ``tierlm_compression.json`` records per layer)."""

    def _require(self, calib: "LayerStats | None") -> "LayerStats":
        return require_stats(self.name, self.needs, calib)
