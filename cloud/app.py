"""The cloud tier as a Ray Serve application.

One `LLMServer` deployment per configured model (its own replicas, autoscaling and
resources, a text engine chosen by config and served through `SpeculativeGenerator`, which adds
the Verify rpc for edge drafters when the config asks for it) behind one `GeneratorIngress`, which
implements the tierlm.v1 Generator rpc names for Ray Serve's gRPC proxy, plus grpc.health.v1 Check so
Kubernetes gRPC probes work against the proxy. The router calls the proxy exactly as it
calls an edge node; gRPC metadata `tierlm-model` picks a model other than the first.

    serve run tierlm.cloud.app:build_app   (args: the cloud config as a dict)
    tierlm cloud serve --config cloud.yaml
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from typing import Any

import grpc
from grpc_health.v1 import health_pb2
from ray import serve
from ray.serve.grpc_util import RayServegRPCContext
from ray.serve.handle import DeploymentHandle

from tierlm.cloud.config import CloudConfig, ModelDeploymentConfig
from tierlm.cloud.engines import make_text_engine, make_verifier
from tierlm.edge.speculative.service import SpeculativeGenerator
from tierlm.errors import GenerationError
from tierlm.v1 import MODEL_METADATA_KEY, generator_pb2

log = logging.getLogger(__name__)

# How long a health check waits for each model's replica to answer.
HEALTH_TIMEOUT_S = 5.0
# What the proxy must register; the stubs are importable wherever tierlm is installed.
GRPC_SERVICER_FUNCTIONS = [
    "tierlm.v1.generator_pb2_grpc.add_GeneratorServicer_to_server",
    "grpc_health.v1.health_pb2_grpc.add_HealthServicer_to_server",
]


@serve.deployment
class LLMServer:
    """One replica of one model: its text engine behind the Generator contract's messages."""

    def __init__(self, model: dict[str, Any], tier_name: str):
        self.config = ModelDeploymentConfig.model_validate(model)
        engine = make_text_engine(self.config)
        self.generator = SpeculativeGenerator(engine, self.config.name, tier_name, verifier=make_verifier(self.config, engine))

    async def generate(self, request: generator_pb2.GenerateRequest) -> generator_pb2.GenerateResponse:
        return await self.generator.generate(request)

    async def generate_stream(self, request: generator_pb2.GenerateRequest) -> AsyncIterator[generator_pb2.GenerateResponse]:
        async for chunk in self.generator.stream(request):
            yield chunk

    async def verify(self, request: generator_pb2.VerifyRequest) -> generator_pb2.VerifyResponse:
        return await self.generator.verify(request)

    async def check_health(self) -> None:
        # Serve calls this every health_check_period_s; raising restarts the replica.
        status = await self.generator.engine.health()
        if not status.ok:
            raise GenerationError(grpc.StatusCode.UNAVAILABLE, status.detail)

    async def __del__(self) -> None:
        await self.generator.engine.aclose(timeout=self.config.graceful_shutdown_timeout_s)
        await self.generator.aclose_speculation()


# The ingress only forwards; reserving no CPU keeps a whole core for the model replicas on
# small machines (Ray would otherwise hold one logical CPU per ingress replica).
@serve.deployment(max_ongoing_requests=1024, ray_actor_options={"num_cpus": 0})
class GeneratorIngress:
    """The Generator service as Ray Serve's gRPC proxy sees it: methods named after the rpcs."""

    def __init__(self, servers: dict[str, DeploymentHandle], default_model: str):
        self._servers = servers
        self._default = default_model

    def _server(self, context: RayServegRPCContext) -> DeploymentHandle:
        name = dict(context.invocation_metadata()).get(MODEL_METADATA_KEY, self._default)
        server = self._servers.get(name)
        if server is None:
            raise GenerationError(grpc.StatusCode.INVALID_ARGUMENT, f"unknown model {name!r}; models are {sorted(self._servers)}")
        return server

    async def Generate(self, request: generator_pb2.GenerateRequest, grpc_context: RayServegRPCContext):
        try:
            return await self._server(grpc_context).generate.remote(request)
        except GenerationError as exc:
            grpc_context.set_code(exc.code)
            grpc_context.set_details(str(exc))
            return generator_pb2.GenerateResponse()

    async def GenerateStream(self, request: generator_pb2.GenerateRequest, grpc_context: RayServegRPCContext):
        try:
            stream = self._server(grpc_context).options(stream=True).generate_stream.remote(request)
            async for chunk in stream:
                yield chunk
        except GenerationError as exc:
            grpc_context.set_code(exc.code)
            grpc_context.set_details(str(exc))

    async def Verify(self, request: generator_pb2.VerifyRequest, grpc_context: RayServegRPCContext):
        try:
            return await self._server(grpc_context).verify.remote(request)
        except GenerationError as exc:
            grpc_context.set_code(exc.code)
            grpc_context.set_details(str(exc))
            grpc_context.set_trailing_metadata(list(exc.trailing_metadata()))
            return generator_pb2.VerifyResponse()

    async def Check(self, request: health_pb2.HealthCheckRequest) -> health_pb2.HealthCheckResponse:
        # The ingress is up long before a model replica has loaded its engine (vLLM: minutes on
        # a small CPU), so SERVING means every model has a replica that answers within the
        # timeout; a load balancer or `tierlm up` must not send requests before that.
        try:
            await asyncio.wait_for(asyncio.gather(*(server.check_health.remote() for server in self._servers.values())),
                                   timeout=HEALTH_TIMEOUT_S)
        except Exception:  # noqa: BLE001 - no replica yet, a replica that says it is unwell, or a timeout
            return health_pb2.HealthCheckResponse(status=health_pb2.HealthCheckResponse.NOT_SERVING)
        return health_pb2.HealthCheckResponse(status=health_pb2.HealthCheckResponse.SERVING)


def _deployment(model: ModelDeploymentConfig, tier_name: str) -> Any:
    scaling = model.autoscaling
    return LLMServer.options(
        name=f"llm-{model.name}",
        autoscaling_config={
            "min_replicas": scaling.min_replicas,
            "max_replicas": scaling.max_replicas,
            "target_ongoing_requests": scaling.target_ongoing_requests,
            "upscale_delay_s": scaling.upscale_delay_s,
            "downscale_delay_s": scaling.downscale_delay_s,
        },
        max_ongoing_requests=model.max_ongoing_requests,
        ray_actor_options={"num_cpus": model.resources.num_cpus, "num_gpus": model.resources.num_gpus},
        health_check_period_s=model.health_check_period_s,
        graceful_shutdown_timeout_s=model.graceful_shutdown_timeout_s,
    ).bind(model.model_dump(), tier_name)


def build_app(args: dict[str, Any] | CloudConfig) -> serve.Application:
    """The Serve application for a cloud config (a dict, as `serve run` and RayService pass it)."""
    config = args if isinstance(args, CloudConfig) else CloudConfig.model_validate(args)
    servers = {model.name: _deployment(model, config.tier_name) for model in config.models}
    return GeneratorIngress.bind(servers, config.models[0].name)
