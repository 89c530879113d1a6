"""A tierlm artifact as a compressed-tensors checkpoint, the format vLLM (its CPU build too) loads.

vLLM 0.32's CPU backend runs two of the compressed-tensors schemes our kernels produce, and
this module writes both from the artifact's packed tensors as they are (no re-quantization,
so the cloud engine runs the very weights the edge runtime runs):

- **int4 group-wise** (our RTN and GPTQ; ``int_group``, 4 bits, contiguous groups) as
  ``pack-quantized`` W4A16 with zero points, run by vLLM's ``CPUWNA16LinearKernel``. Our
  ``qweight [K/8, N]`` (8 nibbles per int32 along the input dim, low nibble first) transposed is
  compressed-tensors' ``weight_packed [N, K/8]``; ``qzeros [G, N/8]`` transposed is
  ``weight_zero_point [N/8, G]``; ``scales [G, N]`` transposed is ``weight_scale [N, G]``.
  Codes and zero points are both unsigned, so ``(q - z) · s`` is the same product.
- **W8A8 int8** (``int8`` without SmoothQuant or outlier columns) as ``int-quantized``:
  per-output-channel symmetric int8 weights and dynamic per-token symmetric int8 activations,
  run by vLLM's ``CPUInt8ScaledMMLinearKernel`` (oneDNN). Our ``qweight [N, K]`` is ``weight``,
  our ``scale [N]`` is ``weight_scale [N, 1]``.

What cannot be exported, and why (:class:`ExportError` names the module):

- AWQ's and SmoothQuant's per-input-channel scales (``input_scale``, ``smooth``): vLLM fuses
  q/k/v and gate/up into one linear with one input, and has no per-input scale in either
  scheme. Folding a scale into the previous op needs the fused projections to share it (ours
  are per module: AWQ's q and k share it, v does not) and has nowhere to go for ``o_proj``,
  whose input is the attention output. The result would not be the artifact's model.
- LLM.int8() outlier columns: no mixed float/int8 linear in vLLM.
- GPTQ act-order (``g_idx``) and int3: ``CPUWNA16LinearKernel`` runs 4-bit contiguous groups only.
- NF4, sparse, low-rank and composite modules: no vLLM CPU kernel for those formats.

Embedding tables: vLLM's quantized embedding lookup is a Triton kernel (GPU only), so a
quantized table is written dequantized, in float32, which holds int4 and int8 products
exactly. A tied output layer then runs in float in vLLM; our runtime (:func:`read_exported` assembled by the edge loader) on
the exported checkpoint) does the same, so both sides run one model.
"""

from __future__ import annotations

import json
import shutil
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from tierlm.kernels.artifact import TOKENIZER_FILES, WEIGHTS, read_manifest
from tierlm.kernels.compressed_tensors import PACKED, QUANT_METHOD, ExportError, Scheme
from tierlm.kernels.methods import read_compressed_tensors
from tierlm.kernels.modules import QuantEmbedding, QuantLinear

#: The HF module prefix of a decoder's blocks, embedding and norm (``model.layers.0...``).
HF_PREFIX = "model."

__all__ = ["ExportError", "ExportSummary", "ExportedParts", "export_for_vllm", "is_exported", "read_exported"]


@dataclass
class ExportSummary:
    """What :func:`export_for_vllm` wrote."""

    out: Path
    schemes: dict[str, int] = field(default_factory=dict)  # format -> number of linears
    dequantized: list[str] = field(default_factory=list)  # tables written in float32


def export_for_vllm(model: nn.Module, artifact: str | Path, out: str | Path) -> ExportSummary:
    """Write ``model``, loaded from ``artifact``, as a compressed-tensors HF folder at ``out``
    (see the module docstring); config and tokenizer files come from ``artifact``.

    Raises :class:`ExportError` before writing anything when a module cannot be exported.
    """
    from safetensors.torch import save_file

    artifact, out = Path(artifact), Path(out)
    manifest = read_manifest(artifact)
    tied = manifest["tied_output"]
    summary = ExportSummary(out)
    tensors: dict[str, torch.Tensor] = {}
    targets: dict[str, list[str]] = defaultdict(list)
    schemes: dict[str, Scheme] = {}
    replaced: set[str] = set()
    for name, module in model.named_modules():
        if isinstance(module, QuantLinear):
            if name == "lm_head" and tied:
                continue  # the embedding's table, written below
            if name == "lm_head":
                # The output layer reads the same rows a table does: float, like a tied one.
                tensors["lm_head.weight"] = module.qweight.dequantize().to(torch.float32).contiguous()
                summary.dequantized.append(name)
                replaced.add(name)
                continue
            scheme, parts = module.qweight.to_compressed_tensors(name)
            hf = HF_PREFIX + name
            schemes[scheme.key] = scheme
            targets[scheme.key].append(hf)
            tensors.update({f"{hf}.{k}": v for k, v in parts.items()})
            if module.bias is not None:
                tensors[f"{hf}.bias"] = module.bias.detach()
            replaced.add(name)
        elif isinstance(module, QuantEmbedding):
            tensors[f"{HF_PREFIX}{name}.weight"] = module.qweight.dequantize().to(torch.float32).contiguous()
            summary.dequantized.append(name)
            replaced.add(name)
    for key, value in model.state_dict().items():
        if any(key.startswith(p + ".") for p in replaced) or (tied and key == "lm_head.weight"):
            continue
        tensors[key if key.startswith("lm_head.") else HF_PREFIX + key] = value.detach().contiguous()

    config = json.loads((artifact / "config.json").read_text())
    config["quantization_config"] = {
        "quant_method": QUANT_METHOD,
        "format": "mixed" if len(schemes) > 1 else next(iter(schemes.values())).format if schemes else PACKED,
        "config_groups": {f"group_{i}": schemes[k].group(sorted(t)) for i, (k, t) in enumerate(targets.items())},
        # The output layer is never quantized in the export (see the module docstring).
        "ignore": ["lm_head"],
        "quantization_status": "compressed",
        "kv_cache_scheme": None,
        "tierlm_source": manifest.get("recipe", {}).get("name", str(artifact)),
    }
    out.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(out / WEIGHTS), metadata={"format": "pt", "producer": "tierlm-export"})
    (out / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    for name in TOKENIZER_FILES:
        if (artifact / name).exists():
            shutil.copy2(artifact / name, out / name)
    summary.schemes = {schemes[k].format: len(t) for k, t in targets.items()}
    return summary


def quantization_config(path: str | Path) -> dict[str, Any] | None:
    """The compressed-tensors ``quantization_config`` of an HF folder, or None."""
    config_file = Path(path) / "config.json"
    if not config_file.is_file():
        return None
    q = json.loads(config_file.read_text()).get("quantization_config")
    return q if isinstance(q, dict) and q.get("quant_method") == QUANT_METHOD else None


def is_exported(path: str | Path) -> bool:
    """Whether ``path`` is a compressed-tensors checkpoint (ours or anyone's in these schemes)."""
    return quantization_config(path) is not None


@dataclass
class ExportedParts:
    """A compressed-tensors checkpoint read back: its quantized linears as
    :class:`~tierlm.kernels.modules.QuantLinear` and every other tensor, both by HF name
    (``model.layers.0.mlp.up_proj``); the caller maps the names onto its decoder."""

    modules: dict[str, QuantLinear]
    dense: dict[str, torch.Tensor]


def read_exported(path: str | Path) -> ExportedParts:
    """The linears and dense tensors of a checkpoint in the schemes :func:`export_for_vllm` writes.

    Linears run the checkpoint's packed tensors on our fast kernels; W4A16 keeps activations in
    float (accuracy level 0) as the scheme says, so the edge runtime and vLLM compute the same
    products; W8A8 quantizes them to int8 as the artifact's own kernel does.
    """
    from safetensors.torch import load_file

    path = Path(path)
    qconfig = quantization_config(path)
    if qconfig is None:
        raise ValueError(f"{path}: no compressed-tensors quantization_config in config.json")
    state: dict[str, torch.Tensor] = {}
    for file in sorted(path.glob("*.safetensors")):
        state.update(load_file(str(file)))
    modules: dict[str, QuantLinear] = {}
    for group in qconfig["config_groups"].values():
        for target in group["targets"]:
            parts = {k[len(target) + 1 :]: state.pop(k) for k in [k for k in state if k.startswith(target + ".")]}
            bias = parts.pop("bias", None)
            # W4A16 keeps activations in float (MatMulNBits accuracy level 0); W8A8 quantizes them,
            # as the artifact's own int8 kernel does (level 4).
            level = 0 if group["format"] == PACKED else 4
            modules[target] = QuantLinear(read_compressed_tensors(parts, group), bias, int4_accuracy_level=level)
    return ExportedParts(modules, state)
