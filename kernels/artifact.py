"""The compressed-model artifact (docs/compression.md): write it from a compressed decoder, load it back.

An artifact is a folder::

    config.json                 the source model's HF config, unchanged
    tokenizer.json, ...         the source model's tokenizer files
    model.safetensors           dense tensors + each compressed module's packed tensors
    tierlm_compression.json     what was done to which module, and how to rebuild it

``tierlm_compression.json``::

    {"format": "tierlm-compression", "version": 1,
     "recipe": {...the validated recipe...}, "source": "...", "tied_output": true,
     "bytes": {"blocks": ..., "embeddings": ..., "other": ..., "total": ...},
     "modules": {
       "layers.0.mlp.up_proj": {"kind": "quantized_linear", "method": "gptq", "bits": 4,
                                "group_size": 128, "sparsity": null, "rank": null,
                                "config": {...quantizer settings...},
                                "storage": {"format": "group", ...}, "bytes": 123456},
       "embed_tokens": {"kind": "quantized_embedding", ...}}}

Tensor names in ``model.safetensors`` are our decoder's module names (``layers.0.mlp.up_proj``),
a compressed module's tensors prefixed by its name (``layers.0.mlp.up_proj.qweight``).

Module kinds are codecs (:class:`ModuleCodec`): a codec turns one kind of compressed
``nn.Module`` into tensors + JSON and back. Quantized linears and embeddings carry any stored
format (int4 groups, int8, NF4, sparse, low-rank, composite: the format is the module's
weight, :data:`tierlm.kernels.methods.FORMATS`), so these two codecs cover every method. A
compressed module carries its description (method, bits, ...) in a ``compression`` attribute,
set by whoever built it.

Loading needs the model's architecture, which the kernels do not know: :func:`read_artifact`
returns the compressed modules and the dense tensors, and the caller (the edge runtime's
loader) sets them into a skeleton of its decoder.
"""

from __future__ import annotations

import json
import shutil
from abc import ABC, abstractmethod
from pathlib import Path
from dataclasses import dataclass
from typing import Any, ClassVar, Mapping

import torch
from torch import nn

from tierlm.kernels.decoder import CompressibleDecoder
from tierlm.kernels.methods import read_quantized
from tierlm.kernels.modules import QuantEmbedding, QuantLinear


MANIFEST = "tierlm_compression.json"
FORMAT = "tierlm-compression"
VERSION = 1
WEIGHTS = "model.safetensors"
#: Files copied from the source folder besides config.json (whichever exist).
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "tokenizer.model",
    "chat_template.jinja",
    "generation_config.json",
    "vocab.json",
    "merges.txt",
)
#: Per-module description keys every entry has (None where a method does not use them), so
#: readers of the manifest need not know each method.
DESCRIPTION_KEYS = ("method", "bits", "group_size", "sparsity", "rank")


class ModuleCodec(ABC):
    """Saves and rebuilds one kind of compressed module."""

    #: The ``kind`` written into the manifest.
    kind: ClassVar[str]
    #: The module class this codec writes.
    module_type: ClassVar[type[nn.Module]]

    @abstractmethod
    def encode(self, module: nn.Module) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        """``(tensors by name without prefix, JSON-able storage metadata)``."""

    @abstractmethod
    def decode(self, tensors: Mapping[str, torch.Tensor], storage: Mapping[str, Any]) -> nn.Module:
        """Rebuild the module from :meth:`encode` output."""


class QuantLinearCodec(ModuleCodec):
    """:class:`~tierlm.kernels.modules.QuantLinear`: the quantized tensor plus a float bias."""

    kind = "quantized_linear"

    module_type = QuantLinear

    def encode(self, module: nn.Module) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        tensors, storage = module.qweight.to_state_dict("w")
        tensors = {name.removeprefix("w."): t for name, t in tensors.items()}
        if module.bias is not None:
            tensors["bias"] = module.bias.detach()
        return tensors, storage

    def decode(self, tensors: Mapping[str, torch.Tensor], storage: Mapping[str, Any]) -> nn.Module:
        weight = read_quantized({f"w.{k}": v for k, v in tensors.items() if k != "bias"}, "w", storage)
        return QuantLinear(weight, tensors.get("bias"))


class QuantEmbeddingCodec(ModuleCodec):
    """:class:`~tierlm.kernels.modules.QuantEmbedding`: the quantized table and its row scale."""

    kind = "quantized_embedding"

    module_type = QuantEmbedding

    def encode(self, module: nn.Module) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        tensors, storage = module.qweight.to_state_dict("w")
        tensors = {name.removeprefix("w."): t for name, t in tensors.items()}
        return tensors, {**storage, "scale": module.scale, "padding_idx": module.padding_idx}

    def decode(self, tensors: Mapping[str, torch.Tensor], storage: Mapping[str, Any]) -> nn.Module:
        meta = {k: v for k, v in storage.items() if k not in ("scale", "padding_idx")}
        weight = read_quantized({f"w.{k}": v for k, v in tensors.items()}, "w", meta)
        return QuantEmbedding(weight, float(storage["scale"]), storage["padding_idx"])


#: Every module kind an artifact can hold, by the ``kind`` its manifest entry names.
CODECS: dict[str, ModuleCodec] = {codec.kind: codec for codec in (QuantLinearCodec(), QuantEmbeddingCodec())}


def codec_for(module: nn.Module) -> ModuleCodec | None:
    """The codec that writes ``module``'s class, or None for a plain (dense) module."""
    return next((codec for codec in CODECS.values() if isinstance(module, codec.module_type)), None)


def _codec_named(kind: str) -> ModuleCodec:
    try:
        return CODECS[kind]
    except KeyError:
        raise ValueError(f"unknown compressed module kind {kind!r}; known: {sorted(CODECS)}") from None


def describe(config: Mapping[str, Any]) -> dict[str, Any]:
    """A manifest description from a method's settings (e.g. ``Quantizer.config()``).

    Every entry gets :data:`DESCRIPTION_KEYS`; ``config`` keeps the method's full settings.
    NF4 calls its group a block, and int8 is per output channel (no group).
    """
    bits = config.get("bits", {"int8": 8, "nf4": 4}.get(config.get("method", "")))
    group = config.get("group_size", config.get("block_size"))
    return {
        "method": config.get("method"),
        "bits": bits,
        "group_size": group,
        "sparsity": config.get("sparsity"),
        "rank": config.get("rank"),
        "config": dict(config),
    }


def artifact_state(model: CompressibleDecoder) -> tuple[dict[str, torch.Tensor], dict[str, dict[str, Any]], bool]:
    """What an artifact of ``model`` stores: ``(tensors, module entries, tied_output)``.

    Works for a plain model too (no entries), which is how the fp32 baseline's bytes are counted
    the same way as a compressed model's. A tied output layer is stored once, as the embedding.
    """
    tied = model.config.tie_word_embeddings
    compressed: dict[str, nn.Module] = {}
    for name, module in model.named_modules():
        if codec_for(module) is not None and not any(name.startswith(p + ".") for p in compressed):
            compressed[name] = module
    if tied and "lm_head" in compressed:
        # The output layer shares the embedding's storage; the loader rebuilds it from there.
        if "embed_tokens" not in compressed or compressed["lm_head"].qweight is not compressed["embed_tokens"].qweight:
            raise ValueError("tied embeddings: compress the embedding table, not a separate lm_head")
        del compressed["lm_head"]

    tensors: dict[str, torch.Tensor] = {}
    entries: dict[str, dict[str, Any]] = {}
    for name, module in compressed.items():
        codec = codec_for(module)
        assert codec is not None
        parts, storage = codec.encode(module)
        description = getattr(module, "compression", None) or describe({})
        entries[name] = {
            "kind": codec.kind,
            **{k: description.get(k) for k in DESCRIPTION_KEYS},
            "config": description.get("config", {}),
            "storage": storage,
            "bytes": sum(t.numel() * t.element_size() for t in parts.values()),
        }
        tensors.update({f"{name}.{k}": v.detach().contiguous() for k, v in parts.items()})
    for key, value in model.state_dict().items():
        if any(key.startswith(p + ".") for p in compressed) or (tied and key == "lm_head.weight"):
            continue
        tensors[key] = value.detach().contiguous()
    return tensors, entries, tied


def byte_breakdown(tensors: Mapping[str, torch.Tensor]) -> dict[str, int]:
    """Stored bytes of the decoder blocks, the embedding/output tables, everything else, total."""
    out = {"blocks": 0, "embeddings": 0, "other": 0}
    for name, t in tensors.items():
        part = "blocks" if name.startswith("layers.") else "embeddings" if name.startswith(("embed_tokens.", "lm_head.")) else "other"
        out[part] += t.numel() * t.element_size()
    out["total"] = sum(out.values())
    return out


def save_artifact(
    model: CompressibleDecoder, out: str | Path, source: str | Path, extra: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """Write ``model`` (compressed or not) as an artifact folder next to ``source``'s files.

    ``source`` is the HF folder the model was loaded from (config and tokenizer come from
    there); ``extra`` goes into the manifest as is (recipe, calibration, timings). Returns the
    manifest.
    """
    from safetensors.torch import save_file

    out, source = Path(out), Path(source)
    out.mkdir(parents=True, exist_ok=True)
    tensors, entries, tied = artifact_state(model)
    shutil.copy2(source / "config.json", out / "config.json")
    for name in TOKENIZER_FILES:
        if (source / name).exists():
            shutil.copy2(source / name, out / name)
    save_file(tensors, str(out / WEIGHTS), metadata={"format": "pt", "producer": FORMAT})
    manifest = {
        "format": FORMAT,
        "version": VERSION,
        "source": str(source),
        "tied_output": tied,
        "bytes": byte_breakdown(tensors),
        **(extra or {}),
        "modules": entries,
    }
    (out / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


def is_artifact(path: str | Path) -> bool:
    """Whether ``path`` is a folder written by :func:`save_artifact`."""
    return (Path(path) / MANIFEST).is_file()


def read_manifest(path: str | Path) -> dict[str, Any]:
    """The parsed ``tierlm_compression.json`` of an artifact (format and version checked)."""
    manifest = json.loads((Path(path) / MANIFEST).read_text())
    if manifest.get("format") != FORMAT or manifest.get("version") != VERSION:
        raise ValueError(f"{path}: not a {FORMAT} v{VERSION} artifact (got {manifest.get('format')} v{manifest.get('version')})")
    return manifest


@dataclass
class ArtifactParts:
    """An artifact read back, for a loader that knows the architecture to assemble it.

    ``modules``: each compressed module by its name in the decoder, ready to be set in place;
    ``dense``: every other tensor by its state-dict name; ``tied_output``: the output layer
    shares the embedding table (rebuild it as the compressed table's ``tied_output()`` when the
    table is among ``modules``, else tie the dense weights).
    """

    manifest: dict[str, Any]
    modules: dict[str, nn.Module]
    dense: dict[str, torch.Tensor]
    tied_output: bool


def read_artifact(path: str | Path) -> ArtifactParts:
    """The compressed modules and dense tensors of the artifact at ``path``."""
    from safetensors.torch import load_file

    path = Path(path)
    manifest = read_manifest(path)
    state = load_file(str(path / WEIGHTS))
    modules: dict[str, nn.Module] = {}
    for name, entry in manifest["modules"].items():
        head = name + "."
        parts = {k[len(head):]: state.pop(k) for k in [k for k in state if k.startswith(head)]}
        module = _codec_named(entry["kind"]).decode(parts, entry["storage"])
        module.compression = {k: v for k, v in entry.items() if k not in ("kind", "storage", "bytes")}
        modules[name] = module
    return ArtifactParts(manifest, modules, state, bool(manifest["tied_output"]))
