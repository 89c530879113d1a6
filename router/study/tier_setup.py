"""Turning a policy's tiers into what offline tools run: prompt builders and in-process models."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from tierlm.config import PromptStrategy, TierConfig
from tierlm.edge import catalog
from tierlm.errors import MissingResource
from tierlm.router.embeddings import TextEncoder
from tierlm.router.prompting import Labelled, PromptBuilder

#: A tier without a prompt strategy is sent each row's query as it is.
VERBATIM = PromptStrategy(k=0, template="{query}")


def prompt_builder(tier: TierConfig, pool: Sequence[Labelled], encoder: TextEncoder | None) -> PromptBuilder:
    """The tier's prompt builder over ``pool`` (the training split); :data:`VERBATIM` if it names
    no strategy."""
    strategy = tier.prompt or VERBATIM
    if strategy.selection == "retrieved" and encoder is None:
        raise ValueError(f"tier {tier.name!r} retrieves demonstrations by similarity and needs the sentence encoder")
    return PromptBuilder(strategy, pool, encoder=encoder)


def model_folder(tier: TierConfig) -> Path:
    """A tier's model as a local folder: a `tierlm model list` name (prepared once, cached) or a path."""
    if tier.model is None:
        raise ValueError(f"tier {tier.name!r} names no model to run in-process")
    if tier.model in catalog.MODELS:
        return catalog.prepare(tier.model)
    folder = Path(tier.model).expanduser()
    if not folder.is_dir():
        raise MissingResource(f"tier {tier.name!r}: model {tier.model!r} is neither a known model name nor a folder")
    return folder
