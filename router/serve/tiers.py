"""Calling one tier: the :class:`Tier` protocol the cascade runs on, and its gRPC client.

The cascade needs two calls of a tier, each bounded by the time the request has left, and one
failure type; :class:`TierClient` provides them over the Generator contract with the tier's
deadline, TLS and key. Tests and in-process tiers provide the same two calls directly.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import AbstractContextManager
from typing import Any, Protocol

import grpc

from tierlm import tracing
from tierlm.auth import API_KEY_HEADER
from tierlm.config import TierConfig
from tierlm.v1 import MODEL_METADATA_KEY, generator_pb2, generator_pb2_grpc


class TierFailure(Exception):
    """A tier did not answer; `code` is the gRPC status the router saw (UNAVAILABLE, ...) and
    `metadata` the call's trailing metadata (e.g. what a failed speculative generation cost)."""

    def __init__(self, tier: str, code: grpc.StatusCode, details: str, metadata: tuple[tuple[str, str | bytes], ...] = ()):
        self.tier = tier
        self.code = code
        self.details = details
        self.metadata = metadata
        super().__init__(f"{code.name}: {details}")


class Tier(Protocol):
    """One tier as the cascade calls it; every failure is raised as :class:`TierFailure`."""

    async def generate(
        self, request: generator_pb2.GenerateRequest, remaining_s: float | None
    ) -> generator_pb2.GenerateResponse:
        """The tier's whole answer, within ``remaining_s`` seconds (None: the tier's own timeout)."""

    def stream(
        self, request: generator_pb2.GenerateRequest, remaining_s: float | None
    ) -> AsyncIterator[generator_pb2.GenerateResponse]:
        """The answer's chunks as they come, the last one final (``is_final``) with usage."""


# gRPC's own reconnect backoff grows from 1 s to 120 s, so a tier that restarted (an edge node
# killed and brought back) would stay unreachable for up to two minutes after it is healthy,
# and the breaker's probe would fail fast against the backoff, not the tier.
# Round robin: a tier address that resolves to several servers (a headless Service's DNS name,
# an ipv4: list) gets calls spread over all of them; gRPC's default, pick_first, uses one.
CHANNEL_OPTIONS = (
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 2000),
    ("grpc.lb_policy_name", "round_robin"),
)


def _record_usage(span: Any, answer: generator_pb2.GenerateResponse) -> None:
    tracing.set_status(span, "OK", True)
    if span is not None:
        span.set_attributes({"tierlm.prompt_tokens": answer.usage.prompt_tokens,
                             "tierlm.completion_tokens": answer.usage.completion_tokens})


class TierClient:
    """A :class:`Tier` over gRPC: an async Generator client. Create and use it inside the
    router's event loop."""

    def __init__(self, config: TierConfig):
        if config.address is None:
            raise ValueError(f"tier {config.name!r} has no address to call (an in_router tier runs in the router)")
        self.config = config
        if config.tls is None:
            self._channel = grpc.aio.insecure_channel(config.address, CHANNEL_OPTIONS)
        else:
            root = config.tls.ca_file.read_bytes() if config.tls.ca_file else None
            options = list(CHANNEL_OPTIONS)
            if config.tls.server_name:
                options.append(("grpc.ssl_target_name_override", config.tls.server_name))
            self._channel = grpc.aio.secure_channel(config.address, grpc.ssl_channel_credentials(root), options)
        self._stub = generator_pb2_grpc.GeneratorStub(self._channel)
        key = os.environ.get(config.api_key_env, "") if config.api_key_env else ""
        metadata = [(API_KEY_HEADER, key)] if key else []
        if config.served_model:
            metadata.append((MODEL_METADATA_KEY, config.served_model))
        self._metadata = tuple(metadata)

    def timeout(self, remaining_s: float | None, timeout_s: float | None = None) -> float:
        """The call's deadline: ``timeout_s`` (default: the tier's own timeout), or less if the
        caller has less left."""
        limit = self.config.timeout_s if timeout_s is None else timeout_s
        return limit if remaining_s is None else max(0.0, min(remaining_s, limit))

    async def generate(
        self, request: generator_pb2.GenerateRequest, remaining_s: float | None, timeout_s: float | None = None
    ) -> generator_pb2.GenerateResponse:
        """The whole answer; ``timeout_s`` replaces the tier's timeout (a speculative generation
        through this tier takes as long as the verify tier's)."""
        with self._span("Generate") as span:
            try:
                answer = await self._stub.Generate(
                    request, timeout=self.timeout(remaining_s, timeout_s), metadata=tracing.with_context(self._metadata)
                )
            except grpc.aio.AioRpcError as exc:
                tracing.set_status(span, exc.code().name, False)
                raise TierFailure(self.config.name, exc.code(), exc.details() or "", tuple(exc.trailing_metadata() or ())) from None
            _record_usage(span, answer)
            return answer

    async def stream(
        self, request: generator_pb2.GenerateRequest, remaining_s: float | None
    ) -> AsyncIterator[generator_pb2.GenerateResponse]:
        with self._span("GenerateStream") as span:
            call = self._stub.GenerateStream(
                request, timeout=self.timeout(remaining_s), metadata=tracing.with_context(self._metadata)
            )
            try:
                async for chunk in call:
                    if chunk.is_final:
                        _record_usage(span, chunk)
                    yield chunk
            except grpc.aio.AioRpcError as exc:
                tracing.set_status(span, exc.code().name, False)
                raise TierFailure(self.config.name, exc.code(), exc.details() or "") from None
            finally:
                call.cancel()

    def _span(self, method: str) -> AbstractContextManager[Any]:
        """One CLIENT span per tier attempt; its context travels to the tier in the call's metadata."""
        return tracing.client_span(
            f"tier {self.config.name}", **{"tierlm.tier": self.config.name, "rpc.system": "grpc",
                                           "rpc.service": "tierlm.v1.Generator", "rpc.method": method,
                                           "server.address": self.config.address}
        )

    async def close(self) -> None:
        await self._channel.close()
