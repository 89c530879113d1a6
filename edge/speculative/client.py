"""The drafter's gRPC client of a verifier (an edge node or the cloud tier's Verify rpc).

A round that meets a verifier being restarted (connection refused, the call cancelled by its
shutdown) is sent again until the round's timeout: a round is idempotent (the verifier cuts the
session back to the round's start), and the restarted verifier answers with a lost session,
which the drafter rebuilds. A verifier still unreachable at the timeout fails the generation.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import dataclass

import grpc

from tierlm.edge.speculative.drafter import VerifierFailed
from tierlm.edge.speculative.sessions import SessionLost
from tierlm.edge.speculative.verifier import VerifyOutcome, VerifyRound
from tierlm.edge.speculative.wire import SESSION_LENGTH_KEY, outcome_from_proto, round_to_proto
from tierlm.v1 import MODEL_METADATA_KEY, generator_pb2_grpc

# As the router's tier clients: a verifier that restarted is reachable again within 2 s.
CHANNEL_OPTIONS = (("grpc.initial_reconnect_backoff_ms", 100), ("grpc.max_reconnect_backoff_ms", 2000))
# Failures that a verifier restart causes; the round is sent again while its time lasts.
TRANSIENT = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED})
RESEND_PAUSE_S = 0.05


@dataclass(frozen=True)
class VerifierEndpoint:
    """Where a drafter's verifier is and how to call it.

    ``address`` host:port; ``timeout_s`` per round; ``api_key`` sent as x-api-key when set;
    ``ca_file`` turns TLS on (the system roots when ``tls`` is set without it); ``model`` is
    the gRPC metadata `tierlm-model` picking one of the cloud tier's models (its first when empty).
    """

    address: str
    timeout_s: float = 10.0
    api_key: str = ""
    tls: bool = False
    ca_file: str | None = None
    model: str = ""


class GrpcVerifier:
    """Calls Verify on ``endpoint``; the channel is opened on first use, on the caller's event loop."""

    def __init__(self, endpoint: VerifierEndpoint, interceptors: Sequence[grpc.aio.ClientInterceptor] = ()) -> None:
        self.endpoint = endpoint
        self._interceptors = list(interceptors)
        self._channel: grpc.aio.Channel | None = None
        self._stub: generator_pb2_grpc.GeneratorStub | None = None
        metadata = []
        if endpoint.api_key:
            metadata.append(("x-api-key", endpoint.api_key))
        if endpoint.model:
            metadata.append((MODEL_METADATA_KEY, endpoint.model))
        self._metadata = tuple(metadata)

    def _open(self) -> generator_pb2_grpc.GeneratorStub:
        if self._stub is None:
            endpoint = self.endpoint
            if endpoint.tls or endpoint.ca_file:
                root = open(endpoint.ca_file, "rb").read() if endpoint.ca_file else None
                credentials = grpc.ssl_channel_credentials(root)
                self._channel = grpc.aio.secure_channel(endpoint.address, credentials, CHANNEL_OPTIONS, interceptors=self._interceptors)
            else:
                self._channel = grpc.aio.insecure_channel(endpoint.address, CHANNEL_OPTIONS, interceptors=self._interceptors)
            self._stub = generator_pb2_grpc.GeneratorStub(self._channel)
        return self._stub

    async def verify(self, round_: VerifyRound) -> VerifyOutcome:
        stub = self._open()
        message = round_to_proto(round_)
        deadline = time.monotonic() + self.endpoint.timeout_s
        while True:
            try:
                # wait_for_ready: while the verifier is down, wait for it (within the timeout)
                # instead of failing at once.
                reply = await stub.Verify(
                    message, timeout=max(0.0, deadline - time.monotonic()), metadata=self._metadata, wait_for_ready=True
                )
                return outcome_from_proto(reply, round_.logprobs)
            except grpc.aio.AioRpcError as exc:
                held = dict(exc.trailing_metadata() or ()).get(SESSION_LENGTH_KEY)
                if exc.code() is grpc.StatusCode.INVALID_ARGUMENT and held is not None:
                    raise SessionLost(exc.details() or "", int(held)) from None
                if exc.code() not in TRANSIENT or time.monotonic() + RESEND_PAUSE_S >= deadline:
                    raise VerifierFailed(f"verifier {self.endpoint.address}: {exc.code().name}: {exc.details()}") from None
            await asyncio.sleep(RESEND_PAUSE_S)

    async def close(self) -> None:
        if self._channel is not None:
            await self._channel.close()
            self._channel = self._stub = None


class AddedLatency(grpc.aio.UnaryUnaryClientInterceptor):
    """Adds ``rtt_s`` to every unary call, half before it is sent and half after its answer: a
    network round trip simulated on the channel (benchmarks and fault tests use it)."""

    def __init__(self, rtt_s: float) -> None:
        self.rtt_s = rtt_s

    async def intercept_unary_unary(self, continuation, client_call_details, request):
        await asyncio.sleep(self.rtt_s / 2)
        call = await continuation(client_call_details, request)
        response = await call  # raises the call's error, after which no delay matters
        await asyncio.sleep(self.rtt_s / 2)
        return response
