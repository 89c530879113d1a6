"""Turning a policy's tiers into what offline tools run: prompt builders and in-process models."""

from __future__ import annotations

from pathlib import Path

from tierlm.config import TierConfig
from tierlm.router.datasets import load_headlines
from tierlm.router.embedding_tier import EmbeddingTier
from tierlm.router.embeddings import Encoder
from tierlm.router.prompting import PromptBuilder, PromptStrategy

# Where demonstrations come from: the labelled training split shipped with the repo. Never
# the split being evaluated, so a dev query cannot see its own label.
DEMONSTRATION_SPLIT = "train"


def prompt_builder(tier: TierConfig, encoder: Encoder | None) -> PromptBuilder:
    """The tier's prompt builder (the default strategy, FrugalGPT's fixed 8-shot prompt, if it names none)."""
    strategy = tier.prompt or PromptStrategy()
    if strategy.selection == "retrieved" and encoder is None:
        raise ValueError(f"tier {tier.name!r} retrieves demonstrations by similarity and needs the sentence encoder")
    return PromptBuilder(strategy, load_headlines(DEMONSTRATION_SPLIT), encoder=encoder)


def model_folder(tier: TierConfig) -> Path:
    """A tier's model as a local folder: a `tierlm model list` name (prepared once, cached) or a path."""
    if tier.model is None:
        raise ValueError(f"tier {tier.name!r} names no model to run in-process")
    from tierlm import models

    if tier.model in models.MODELS:
        return models.prepare(tier.model)
    folder = Path(tier.model).expanduser()
    if not folder.is_dir():
        raise ValueError(f"tier {tier.name!r}: model {tier.model!r} is neither a known model name nor a folder")
    return folder


def no_llm_models() -> dict[str, type[EmbeddingTier]]:
    """Policy `model` names that run a no-LLM tier in-process, and the class that runs each."""
    from tierlm.router.knn_tier import KnnGenerator
    from tierlm.router.probe_tier import ProbeGenerator

    return {cls.model_name: cls for cls in (KnnGenerator, ProbeGenerator)}


def no_llm_tier(tier: TierConfig, encoder: Encoder) -> EmbeddingTier | None:
    """The tier's no-LLM Generator (its classifier learns from the demonstration split), or None
    if its model is a language model."""
    cls = no_llm_models().get(tier.model or "")
    return None if cls is None else cls(encoder, load_headlines(DEMONSTRATION_SPLIT), tier_name=tier.name)
