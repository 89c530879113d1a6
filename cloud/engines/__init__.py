"""Inference engines for a Serve replica, behind the text-engine contract
(:class:`~tierlm.edge.protocol.TextEngine`); the deployment's config picks one by name."""

from __future__ import annotations

from pathlib import Path

from tierlm.cloud.config import ModelDeploymentConfig
from tierlm.edge.protocol import TextEngine
from tierlm.edge.speculative.verifier import Verifier


def make_text_engine(model: ModelDeploymentConfig) -> TextEngine:
    """Load the engine a model's config asks for (blocking); imported lazily, since vLLM is heavy
    and optional."""
    path = Path(model.path).expanduser()
    options = dict(model.engine_options)
    if model.engine == "vllm":
        from tierlm.cloud.engines.vllm_engine import VLLMTextEngine

        return VLLMTextEngine(path, options)
    from tierlm.cloud.engines.torch_engine import torch_text_engine

    return torch_text_engine(path, options)


def make_verifier(model: ModelDeploymentConfig, engine: TextEngine) -> Verifier | None:
    """The replica's verifier when the model's config asks for one (``verify``), else None."""
    if model.verify is None:
        return None
    if model.engine == "vllm":
        from tierlm.cloud.engines.vllm_verifier import VLLMVerifier

        return VLLMVerifier(engine, model.verify.max_sessions, model.verify.session_ttl_s)
    from tierlm.edge.speculative.verifier import SessionVerifier

    return SessionVerifier.from_pretrained(
        Path(model.path).expanduser(), max_sessions=model.verify.max_sessions, ttl_s=model.verify.session_ttl_s,
        threads=model.engine_options.get("threads"),
    )


__all__ = ["make_text_engine", "make_verifier"]
