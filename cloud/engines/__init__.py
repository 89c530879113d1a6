"""Inference engines behind one interface; the Serve deployment gets one injected."""

from __future__ import annotations

from tierlm.cloud.config import ModelDeploymentConfig
from tierlm.cloud.engines.base import Engine


def make_engine(model: ModelDeploymentConfig, tier_name: str) -> Engine:
    """The engine a model's config asks for; imported lazily (vLLM is heavy and optional)."""
    if model.engine == "vllm":
        from tierlm.cloud.engines.vllm_engine import VLLMEngine

        return VLLMEngine(model, tier_name)
    from tierlm.cloud.engines.torch_engine import TorchEngine

    return TorchEngine(model, tier_name)


__all__ = ["Engine", "make_engine"]
