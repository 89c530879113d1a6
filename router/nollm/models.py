"""The no-LLM models by the name a policy tier's ``model`` gives them."""

from __future__ import annotations

from tierlm.router.nollm.base import EmbeddingTier
from tierlm.router.nollm.knn_tier import KnnGenerator
from tierlm.router.nollm.probe_tier import ProbeGenerator

#: Policy `model` names that run a no-LLM tier (in-process offline, or in the router), and the
#: class that runs each; tierlm.config.IN_ROUTER_MODELS lists the same names for the policy
#: schema, which sits below the router.
NO_LLM_MODELS: dict[str, type[EmbeddingTier]] = {cls.model_name: cls for cls in (KnnGenerator, ProbeGenerator)}
