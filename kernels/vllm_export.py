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
exactly. A tied output layer then runs in float in vLLM; :func:`load_exported` (our runtime on
the exported checkpoint) does the same, so both sides run one model.
"""

from __future__ import annotations

import json
import shutil
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from tierlm.kernels.artifact import TOKENIZER_FILES, WEIGHTS, load_artifact, read_manifest

if TYPE_CHECKING:
    from tierlm.edge.model import Transformer
    from tierlm.kernels.quant.base import QuantizedTensor

QUANT_METHOD = "compressed-tensors"
PACKED = "pack-quantized"
INT_QUANTIZED = "int-quantized"
#: The HF module prefix of a decoder's blocks, embedding and norm (``model.layers.0...``).
HF_PREFIX = "model."


class ExportError(ValueError):
    """The artifact holds a module vLLM cannot run as it is (the message says which and why)."""


@dataclass(frozen=True)
class Scheme:
    """One compressed-tensors quantization scheme: its format and its ``config_groups`` entry."""

    format: str
    weights: dict[str, Any]
    input_activations: dict[str, Any] | None = None

    def group(self, targets: list[str]) -> dict[str, Any]:
        return {
            "targets": targets,
            "weights": self.weights,
            "input_activations": self.input_activations,
            "output_activations": None,
            "format": self.format,
        }

    @property
    def key(self) -> str:
        return json.dumps([self.format, self.weights, self.input_activations], sort_keys=True)


def _int_args(bits: int, symmetric: bool, strategy: str, group_size: int | None = None, dynamic: bool = False) -> dict[str, Any]:
    return {
        "num_bits": bits,
        "type": "int",
        "symmetric": symmetric,
        "strategy": strategy,
        "group_size": group_size,
        "dynamic": dynamic,
        "actorder": None,
        "block_structure": None,
        "observer": None if dynamic else "minmax",
        "observer_kwargs": {},
    }


@dataclass
class ExportSummary:
    """What :func:`export_for_vllm` wrote."""

    out: Path
    schemes: dict[str, int] = field(default_factory=dict)  # format -> number of linears
    dequantized: list[str] = field(default_factory=list)  # tables written in float32


def encode_linear(name: str, qt: QuantizedTensor) -> tuple[Scheme, dict[str, torch.Tensor]]:
    """The compressed-tensors scheme and tensors (names without the module prefix) of one linear."""
    from tierlm.kernels.quant.group import GroupQuantTensor
    from tierlm.kernels.quant.int8 import Int8Tensor

    if isinstance(qt, GroupQuantTensor):
        if qt.input_scale is not None:
            raise ExportError(f"{name}: AWQ per-input-channel scales have no place in vLLM's fused linears")
        if qt.g_idx is not None:
            raise ExportError(f"{name}: GPTQ act-order (g_idx) is not run by vLLM's CPU int4 kernel")
        if qt.bits != 4:
            raise ExportError(f"{name}: {qt.bits}-bit weights; vLLM's CPU kernel runs 4-bit only")
        n, k = qt.shape
        scheme = Scheme(PACKED, _int_args(4, False, "group", qt.group_size))
        return scheme, {
            "weight_packed": qt.qweight.t().contiguous(),
            "weight_scale": qt.scales.t().contiguous(),
            "weight_zero_point": qt.qzeros.t().contiguous(),
            "weight_shape": torch.tensor([n, k], dtype=torch.int64),
        }
    if isinstance(qt, Int8Tensor):
        if qt.smooth is not None:
            raise ExportError(f"{name}: SmoothQuant scales have no place in vLLM's fused linears")
        if qt.outlier_idx is not None:
            raise ExportError(f"{name}: LLM.int8() outlier columns have no vLLM kernel")
        scheme = Scheme(
            INT_QUANTIZED,
            _int_args(8, True, "channel"),
            _int_args(8, True, "token", dynamic=True),
        )
        return scheme, {"weight": qt.qweight.contiguous(), "weight_scale": qt.scale.to(torch.float32).reshape(-1, 1)}
    raise ExportError(f"{name}: format {qt.format!r} has no vLLM CPU kernel")


def export_for_vllm(artifact: str | Path, out: str | Path) -> ExportSummary:
    """Write ``artifact`` as a compressed-tensors HF folder at ``out`` (see the module docstring).

    Raises :class:`ExportError` before writing anything when a module cannot be exported.
    """
    from safetensors.torch import save_file

    from tierlm.kernels.modules import QuantEmbedding, QuantLinear

    artifact, out = Path(artifact), Path(out)
    manifest = read_manifest(artifact)
    model = load_artifact(artifact)
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
            scheme, parts = encode_linear(name, module.qweight)
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


def decode_linear(parts: dict[str, torch.Tensor], group: dict[str, Any]) -> QuantizedTensor:
    """Our quantized tensor from one linear's compressed-tensors tensors (inverse of :func:`encode_linear`)."""
    from tierlm.kernels.quant.group import GroupQuantTensor
    from tierlm.kernels.quant.int8 import Int8Tensor

    weights, fmt = group["weights"], group.get("format")
    if fmt == PACKED and weights["num_bits"] == 4 and weights["strategy"] == "group" and not weights["symmetric"]:
        return GroupQuantTensor(
            qweight=parts["weight_packed"].t().contiguous(),
            qzeros=parts["weight_zero_point"].t().contiguous(),
            scales=parts["weight_scale"].t().contiguous(),
            bits=4,
            group_size=int(weights["group_size"]),
            symmetric=False,
        )
    acts = group.get("input_activations") or {}
    if (
        fmt == INT_QUANTIZED
        and weights["num_bits"] == 8
        and weights["strategy"] == "channel"
        and acts.get("strategy") == "token"
        and acts.get("dynamic")
    ):
        return Int8Tensor(qweight=parts["weight"], scale=parts["weight_scale"].reshape(-1).to(torch.float32))
    raise ValueError(f"unsupported compressed-tensors scheme: format {fmt!r}, weights {weights}, activations {acts}")


def load_exported(path: str | Path, dtype: torch.dtype = torch.float32) -> Transformer:
    """Our decoder from a compressed-tensors checkpoint in the schemes :func:`export_for_vllm` writes.

    Linears become :class:`~tierlm.kernels.modules.QuantLinear` over the checkpoint's packed
    tensors with our fast kernels; W4A16 keeps activations in float (int4 accuracy level 0) as
    the scheme says, so the edge runtime and vLLM compute the same products.
    """
    from safetensors.torch import load_file

    from tierlm.edge.config import ModelConfig
    from tierlm.edge.model import Transformer, hf_to_our_name
    from tierlm.kernels.modules import QuantLinear

    path = Path(path)
    qconfig = quantization_config(path)
    if qconfig is None:
        raise ValueError(f"{path}: no compressed-tensors quantization_config in config.json")
    config = ModelConfig.from_dir(path)
    state = {}
    for file in sorted(path.glob("*.safetensors")):
        state.update(load_file(str(file)))
    with torch.device("meta"):
        model = Transformer(config)
    for group in qconfig["config_groups"].values():
        for target in group["targets"]:
            parts = {k[len(target) + 1 :]: state.pop(k) for k in [k for k in state if k.startswith(target + ".")]}
            bias = parts.pop("bias", None)
            module = QuantLinear(decode_linear(parts, group), bias, int4_accuracy_level=0)
            parent, _, child = hf_to_our_name(target).rpartition(".")
            setattr(model.get_submodule(parent) if parent else model, child, module)
    dense = {hf_to_our_name(k): v.to(dtype) for k, v in state.items()}
    if config.tie_word_embeddings:
        dense.pop("lm_head.weight", None)
    missing, unexpected = model.load_state_dict(dense, strict=False, assign=True)
    quantized = {hf_to_our_name(t) for g in qconfig["config_groups"].values() for t in g["targets"]}
    missing = [k for k in missing if not (config.tie_word_embeddings and k == "lm_head.weight") and k.rpartition(".")[0] not in quantized]
    if missing or unexpected:
        raise ValueError(f"{path}: checkpoint does not match the architecture: missing {missing}, unexpected {unexpected}")
    if config.tie_word_embeddings:
        model.lm_head.weight = model.embed_tokens.weight  # assign=True replaced the parameter: tie again
    return model.eval()
