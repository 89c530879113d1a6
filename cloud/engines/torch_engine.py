"""TorchEngine: the edge node's continuous-batching engine, reused as it is, in a Serve replica.

The fallback where vLLM is unavailable (or cannot run a model); the cloud tier adds
replicas, autoscaling and Serve's plumbing around the same engine the edge node runs.
"""

from __future__ import annotations

from pathlib import Path

import grpc

from tierlm.cloud.config import ModelDeploymentConfig
from tierlm.cloud.engines.base import GeneratorEngine
from tierlm.errors import GenerationError


class TorchEngine(GeneratorEngine):
    def __init__(self, model: ModelDeploymentConfig, tier_name: str):
        self.config = model
        self.tier_name = tier_name
        self._generator = None

    def start(self) -> None:
        from tierlm.edge.server import load_generator

        options = dict(self.config.engine_options)
        self._generator = load_generator(
            Path(self.config.path).expanduser(),
            self.tier_name,
            threads=options.pop("threads", None),
            max_batch=options.pop("max_batch", 8),
            max_queue=options.pop("max_queue", 64),
            **options,
        )
        self._generator.model_name = self.config.name

    async def health(self) -> None:
        status = self._generator.engine.health()
        if not status.ok:
            raise GenerationError(grpc.StatusCode.UNAVAILABLE, status.detail)

    async def shutdown(self) -> None:
        await self._generator.engine.aclose(drain=True, timeout=self.config.graceful_shutdown_timeout_s)
