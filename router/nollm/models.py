"""The no-LLM models by the name a policy tier's ``model`` gives them, and a tier's model built."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from tierlm.config import TierConfig
from tierlm.router.embeddings import TextEncoder
from tierlm.router.nollm.base import EmbeddingTier
from tierlm.router.nollm.knn_tier import KnnGenerator
from tierlm.router.nollm.probe_tier import ProbeGenerator
from tierlm.router.prompting import Labelled

#: Policy `model` names that run a no-LLM tier (in-process offline, or in the router), and the
#: class that runs each; tierlm.config.IN_ROUTER_MODELS lists the same names for the policy
#: schema, which sits below the router.
NO_LLM_MODELS: dict[str, type[EmbeddingTier]] = {cls.model_name: cls for cls in (KnnGenerator, ProbeGenerator)}


def no_llm_tier(
    tier: TierConfig, encoder: TextEncoder, pool: Sequence[Labelled], pool_embeddings: np.ndarray | None = None
) -> EmbeddingTier | None:
    """The tier's no-LLM Generator (its classifier learns from ``pool``, embedded by ``encoder``
    unless ``pool_embeddings`` are given), or None if its model is a language model."""
    cls = NO_LLM_MODELS.get(tier.model or "")
    return None if cls is None else cls(encoder, pool, tier_name=tier.name, pool_embeddings=pool_embeddings)
