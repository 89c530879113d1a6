"""What the kernels need of a decoder: the protocol the edge runtime's ``Transformer`` satisfies.

The kernels compress, save and reload a model without importing the model's code: the
pipeline walks its layers and swaps linears for compressed modules, and an artifact's modules
are set into a skeleton the caller built. Anything with these members works.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, Protocol

from torch import Tensor, nn


class DecoderConfig(Protocol):
    tie_word_embeddings: bool


class CompressibleDecoder(Protocol):
    """A decoder-only LM: embedding, a stack of blocks, a final norm and an output layer.

    ``setup_cache`` sizes the KV cache for ``batch`` sequences of ``seq_len`` tokens;
    ``layer_inputs`` gives each block's extra inputs (rotary tables and the batch layout) for
    positions and cache slots, so a pipeline can run one block at a time; ``head`` turns the
    last block's output into logits (final norm, output layer and whatever the family adds).
    """

    config: DecoderConfig
    embed_tokens: nn.Module
    layers: nn.ModuleList
    norm: nn.Module
    lm_head: nn.Module

    def embed(self, tokens: Tensor) -> Tensor: ...

    def head(self, x: Tensor) -> Tensor: ...

    def setup_cache(self, batch: int, seq_len: int, **kwargs: Any) -> None: ...

    def layer_inputs(self, positions: Tensor, slots: Tensor) -> list[Any]: ...

    def named_modules(self) -> Iterator[tuple[str, nn.Module]]: ...

    def state_dict(self) -> dict[str, Tensor]: ...


def set_module(root: nn.Module, name: str, module: nn.Module) -> None:
    """Replace the submodule at dotted ``name`` (``layers.0.mlp.up_proj``) with ``module``."""
    parent, _, child = name.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, child, module)
