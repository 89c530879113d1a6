"""The drafter's gRPC client of a verifier (an edge node or the cloud tier's Verify rpc)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import grpc

from tierlm.edge.speculative.drafter import VerifierFailed
from tierlm.edge.speculative.sessions import SessionLost
from tierlm.edge.speculative.verifier import VerifyOutcome, VerifyRound
from tierlm.edge.speculative.wire import SESSION_LENGTH_KEY, outcome_from_proto, round_to_proto
from tierlm.v1 import generator_pb2_grpc

# As the router's tier clients: a verifier that restarted is reachable again within 2 s.
CHANNEL_OPTIONS = (("grpc.initial_reconnect_backoff_ms", 100), ("grpc.max_reconnect_backoff_ms", 2000))


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
            metadata.append(("tierlm-model", endpoint.model))
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
        try:
            reply = await stub.Verify(round_to_proto(round_), timeout=self.endpoint.timeout_s, metadata=self._metadata)
        except grpc.aio.AioRpcError as exc:
            held = dict(exc.trailing_metadata() or ()).get(SESSION_LENGTH_KEY)
            if exc.code() is grpc.StatusCode.INVALID_ARGUMENT and held is not None:
                raise SessionLost(exc.details() or "", int(held)) from None
            raise VerifierFailed(f"verifier {self.endpoint.address}: {exc.code().name}: {exc.details()}") from None
        return outcome_from_proto(reply, round_.logprobs)

    async def close(self) -> None:
        if self._channel is not None:
            await self._channel.close()
            self._channel = self._stub = None
