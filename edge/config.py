"""Architecture description of the decoder families the edge runtime runs.

`ModelConfig` is the one place that knows how an HF `config.json` of each supported family
maps onto our decoder. Both transformers 4 (`rope_theta`, `rope_local_base_freq`,
`rope_scaling`) and transformers 5 (nested `rope_parameters`) spellings are accepted, since
the prepared model folders may come from either.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from tierlm.errors import MissingResource

SUPPORTED_MODEL_TYPES = ("llama", "gemma3_text")

_ACTIVATIONS = {"silu": "silu", "gelu_pytorch_tanh": "gelu_tanh", "gelu_tanh": "gelu_tanh"}


@dataclass(frozen=True)
class ModelConfig:
    """Everything the decoder needs to know about one checkpoint's architecture.

    Per-layer lists (`rope_theta`, `sliding_window`) have one entry per decoder layer;
    `sliding_window[i]` is None for a layer with full causal attention, otherwise the number
    of most recent positions (the query's own included) a query may attend to.
    """

    model_type: str
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    norm_eps: float
    max_position_embeddings: int
    activation: str
    rope_theta: tuple[float, ...]
    sliding_window: tuple[int | None, ...]
    attention_scale: float
    tie_word_embeddings: bool
    attention_bias: bool = False
    mlp_bias: bool = False
    # Gemma-specific traits, kept as flags so the modules stay family-agnostic.
    norm_unit_offset: bool = False
    qk_norm: bool = False
    sandwich_norm: bool = False
    embed_scale: float | None = None
    final_logit_softcapping: float | None = None
    eos_token_ids: tuple[int, ...] = ()

    @classmethod
    def from_hf(cls, hf: dict[str, Any]) -> ModelConfig:
        """Build from the parsed `config.json` of a supported family; raise ValueError otherwise."""
        if "text_config" in hf:  # a multimodal wrapper: the text decoder is what we run
            hf = {**hf["text_config"], "eos_token_id": hf.get("eos_token_id", hf["text_config"].get("eos_token_id"))}
        model_type = hf.get("model_type")
        if model_type not in SUPPORTED_MODEL_TYPES:
            raise ValueError(f"unsupported model_type {model_type!r}; supported: {', '.join(SUPPORTED_MODEL_TYPES)}")
        num_layers = int(hf["num_hidden_layers"])
        num_heads = int(hf["num_attention_heads"])
        hidden = int(hf["hidden_size"])
        head_dim = int(hf.get("head_dim") or hidden // num_heads)
        act_name = hf.get("hidden_activation") or hf.get("hidden_act", "silu")
        if act_name not in _ACTIVATIONS:
            raise ValueError(f"unsupported activation {act_name!r}")
        common = dict(
            model_type=model_type,
            vocab_size=int(hf["vocab_size"]),
            hidden_size=hidden,
            intermediate_size=int(hf["intermediate_size"]),
            num_layers=num_layers,
            num_heads=num_heads,
            num_kv_heads=int(hf.get("num_key_value_heads") or num_heads),
            head_dim=head_dim,
            norm_eps=float(hf.get("rms_norm_eps", 1e-6)),
            max_position_embeddings=int(hf.get("max_position_embeddings", 2048)),
            activation=_ACTIVATIONS[act_name],
            tie_word_embeddings=bool(hf.get("tie_word_embeddings", model_type == "gemma3_text")),
            attention_bias=bool(hf.get("attention_bias", False)),
            eos_token_ids=_as_ids(hf.get("eos_token_id")),
        )
        if model_type == "llama":
            theta = _rope_theta(hf.get("rope_parameters"), hf.get("rope_scaling"), hf.get("rope_theta"), 10_000.0)
            return cls(
                **common,
                mlp_bias=bool(hf.get("mlp_bias", False)),
                rope_theta=(theta,) * num_layers,
                sliding_window=(None,) * num_layers,
                attention_scale=head_dim**-0.5,
            )
        return cls._gemma3(hf, common, num_layers, hidden)

    @classmethod
    def _gemma3(cls, hf: dict[str, Any], common: dict[str, Any], num_layers: int, hidden: int) -> ModelConfig:
        if hf.get("attn_logit_softcapping") is not None:
            raise ValueError("attention logit soft-capping (Gemma 2) is not supported")
        if hf.get("use_bidirectional_attention"):
            raise ValueError("bidirectional Gemma 3 attention is an encoder setting; the runtime decodes causally")
        pattern = int(hf.get("sliding_window_pattern", 6))
        layer_types = hf.get("layer_types") or [
            "full_attention" if (i + 1) % pattern == 0 else "sliding_attention" for i in range(num_layers)
        ]
        if len(layer_types) != num_layers:
            raise ValueError(f"layer_types has {len(layer_types)} entries for {num_layers} layers")
        rope = hf.get("rope_parameters") or {}
        # transformers 5 nests per layer type; transformers 4 has rope_theta (global) and
        # rope_local_base_freq (sliding layers), with rope_scaling applying to global layers.
        global_theta = _rope_theta(
            rope.get("full_attention"), hf.get("rope_scaling"), hf.get("rope_theta"), 1_000_000.0
        )
        local_theta = _rope_theta(rope.get("sliding_attention"), None, hf.get("rope_local_base_freq"), 10_000.0)
        window = int(hf.get("sliding_window") or 4096)
        thetas, windows = [], []
        for kind in layer_types:
            if kind == "sliding_attention":
                thetas.append(local_theta)
                windows.append(window)
            elif kind == "full_attention":
                thetas.append(global_theta)
                windows.append(None)
            else:
                raise ValueError(f"unsupported layer type {kind!r}")
        return cls(
            **common,
            rope_theta=tuple(thetas),
            sliding_window=tuple(windows),
            attention_scale=float(hf.get("query_pre_attn_scalar", common["head_dim"])) ** -0.5,
            norm_unit_offset=True,
            qk_norm=True,
            sandwich_norm=True,
            embed_scale=math.sqrt(hidden),
            final_logit_softcapping=hf.get("final_logit_softcapping"),
        )

    @classmethod
    def from_dir(cls, path: str | Path) -> ModelConfig:
        """Read `config.json` (and `generation_config.json` for extra EOS ids) from a model folder."""
        path = Path(path)
        if not (path / "config.json").is_file():
            raise MissingResource(f"{path}: not a model folder (no config.json); give an HF folder or a `tierlm compress` artifact")
        config = cls.from_hf(json.loads((path / "config.json").read_text()))
        gen_path = path / "generation_config.json"
        if gen_path.exists():
            extra = _as_ids(json.loads(gen_path.read_text()).get("eos_token_id"))
            merged = tuple(dict.fromkeys(config.eos_token_ids + extra))
            config = replace(config, eos_token_ids=merged)
        return config


def _as_ids(value: Any) -> tuple[int, ...]:
    if value is None:
        return ()
    if isinstance(value, int):
        return (value,)
    return tuple(int(v) for v in value)


def _rope_theta(params: dict | None, scaling: dict | None, theta: float | None, default: float) -> float:
    """Rope base of one layer kind; only plain (unscaled) rope is implemented."""
    params = params or {}
    for source in (params, scaling or {}):
        kind = source.get("rope_type", source.get("type", "default"))
        if kind != "default":
            raise ValueError(f"rope type {kind!r} is not supported (only unscaled rope)")
    return float(params.get("rope_theta") or theta or default)
