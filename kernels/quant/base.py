"""The quantization interface: a ``Quantizer`` turns a dense weight into a ``QuantizedTensor``.

Every method lives in its own module and registers itself here by name, so a recipe (or the
compression pipeline) can say ``get_quantizer("gptq", bits=4, group_size=128)`` and ask the
object which calibration statistics it needs (``Quantizer.needs``) before running any data.

A ``QuantizedTensor`` stands for a 2-D weight ``[out_features, in_features]`` (the nn.Linear
layout; an embedding table ``[vocab, hidden]`` is the same shape as its tied output layer). It
knows how to dequantize itself (the reference every fast kernel is tested against) and how to
store itself as plain tensors plus a small JSON-able metadata dict, so an artifact is a
safetensors file plus ``tierlm_compression.json``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import TYPE_CHECKING, Any, ClassVar, Mapping

import torch

from tierlm.kernels.calibration import require_stats

if TYPE_CHECKING:
    from tierlm.kernels.calibration import LayerStats

_FORMATS: dict[str, type["QuantizedTensor"]] = {}
_QUANTIZERS: dict[str, type["Quantizer"]] = {}


class QuantizedTensor(ABC):
    """A compressed stand-in for a dense ``[out_features, in_features]`` weight."""

    #: Storage format name written into metadata; selects the class when loading.
    format: ClassVar[str]

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "format" in cls.__dict__:
            if cls.format in _FORMATS:
                raise ValueError(f"quantized format {cls.format!r} registered twice")
            _FORMATS[cls.format] = cls

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

    @staticmethod
    def from_state_dict(
        state: Mapping[str, torch.Tensor], prefix: str, meta: Mapping[str, Any]
    ) -> "QuantizedTensor":
        """Inverse of :meth:`to_state_dict`, dispatching on ``meta["format"]``."""
        _register_all()
        try:
            cls = _FORMATS[meta["format"]]
        except KeyError:
            raise ValueError(
                f"unknown quantized format {meta.get('format')!r}; known: {sorted(_FORMATS)}"
            ) from None
        head = f"{prefix}."
        tensors = {k[len(head) :]: v for k, v in state.items() if k.startswith(head)}
        return cls.from_parts(tensors, {k: v for k, v in meta.items() if k != "format"})


class Quantizer(ABC):
    """One quantization method with its settings: ``quantize(weight, calib) -> QuantizedTensor``."""

    #: Registry name used by recipes (``get_quantizer(name, **config)``).
    name: ClassVar[str]
    #: Calibration statistics the method reads from :class:`~tierlm.kernels.calibration.LayerStats`
    #: (any of ``"hessian"``, ``"abs_mean"``, ``"abs_max"``, ``"samples"``); empty = data-free.
    needs: ClassVar[frozenset[str]] = frozenset()

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "name" in cls.__dict__:
            if cls.name in _QUANTIZERS:
                raise ValueError(f"quantizer {cls.name!r} registered twice")
            _QUANTIZERS[cls.name] = cls

    @abstractmethod
    def quantize(self, weight: torch.Tensor, calib: "LayerStats | None" = None) -> QuantizedTensor:
        """Quantize a ``[out_features, in_features]`` weight."""

    @abstractmethod
    def config(self) -> dict[str, Any]:
        """JSON-able settings (what ``tierlm_compression.json`` records per layer)."""

    def _require(self, calib: "LayerStats | None") -> "LayerStats":
        return require_stats(self.name, self.needs, calib)


def _register_all() -> None:
    """Import every module that registers a method or a stored format (a fresh process that only
    loads an artifact has imported none of them)."""
    import tierlm.kernels.composite  # noqa: F401  (composite, and the sparse and low-rank formats)
    import tierlm.kernels.quant  # noqa: F401  (every quantization method and its format)


def get_quantizer(name: str, **config: Any) -> Quantizer:
    """Build a registered quantizer by name, e.g. ``get_quantizer("rtn", bits=4, group_size=128)``."""
    _register_all()
    try:
        cls = _QUANTIZERS[name]
    except KeyError:
        raise ValueError(f"unknown quantizer {name!r}; known: {sorted(_QUANTIZERS)}") from None
    return cls(**config)


def quantizer_names() -> list[str]:
    """Names of all registered quantization methods."""
    _register_all()
    return sorted(_QUANTIZERS)
