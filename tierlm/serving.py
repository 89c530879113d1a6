"""The gRPC server plumbing every tierlm server shares (edge node, router).

One builder gives each server the same behaviour: standard health checking and
reflection, optional TLS, API-key auth (hashes compared in constant time), a request-size
limit, malformed requests answered with INVALID_ARGUMENT, Prometheus metrics on their own
port, and a graceful drain on SIGTERM. Servers only add their servicers.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
import signal
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer
from grpc_reflection.v1alpha import reflection
from prometheus_client import Counter, Histogram, start_http_server

from tierlm import tracing
from tierlm.auth import KeyRing, key_from_metadata
from tierlm.errors import PortUnavailable

log = logging.getLogger(__name__)

# The tenant the current call was authenticated as ("" when auth is off). Handlers read it
# instead of parsing metadata again.
current_tenant: contextvars.ContextVar[str] = contextvars.ContextVar("tierlm_tenant", default="")

# Services anyone may call: load balancers and Kubernetes probes carry no API key.
_OPEN_SERVICES = ("grpc.health.v1.Health", "grpc.reflection.")

RPC_HANDLED = Counter(
    "tierlm_grpc_handled_total", "RPCs completed, by gRPC service, method and status code", ["service", "method", "code"]
)
RPC_SECONDS = Histogram(
    "tierlm_grpc_handling_seconds",
    "Wall time from receipt to completion of an RPC (whole stream for streaming RPCs)",
    ["service", "method"],
    buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
)

Registrar = Callable[[grpc.aio.Server], None]
MAX_PORT = 65535


@dataclass(frozen=True)
class TLSServerFiles:
    cert_file: Path
    key_file: Path
    # When set, clients must present a certificate signed by this CA (mutual TLS).
    client_ca_file: Path | None = None

    def credentials(self) -> grpc.ServerCredentials:
        root = self.client_ca_file.read_bytes() if self.client_ca_file else None
        return grpc.ssl_server_credentials(
            [(self.key_file.read_bytes(), self.cert_file.read_bytes())],
            root_certificates=root,
            require_client_auth=root is not None,
        )


@dataclass
class ServerConfig:
    host: str = "127.0.0.1"
    # 0 asks the OS for a free port; GrpcServer.port tells which one it gave.
    port: int = 0
    metrics_port: int | None = None
    tls: TLSServerFiles | None = None
    # None turns auth off; an empty KeyRing refuses everyone. The commands set None only when
    # told to (`--no-auth`), never because a tenants file is empty.
    keys: KeyRing | None = None
    # Also listen, in plaintext, on this Unix socket: for a front in the same process (the
    # router's OpenAI HTTP endpoint), so it never needs a plaintext TCP port beside a TLS one.
    local_socket: Path | None = None
    max_request_bytes: int = 1 << 20
    # How long SIGTERM waits for in-flight calls before cancelling them.
    drain_grace_s: float = 30.0
    # Share the port with other processes that set it too (SO_REUSEPORT: the kernel spreads
    # connections across them, see router/serve/workers.py); off, a port in use is an error.
    reuse_port: bool = False
    # Told about every call refused for its key, with the method and the (parsed) request, so a
    # server can account for it; it must not raise or block.
    on_auth_failure: Callable[[str, Any], None] | None = None
    # Clients are asked (GOAWAY) to reconnect after this long, finishing calls in flight, so a
    # client of a headless Service re-resolves its name and reaches pods added since it connected.
    max_connection_age_s: float | None = 300.0
    extra_options: list[tuple[str, Any]] = field(default_factory=list)


class _Malformed:
    """Stands in for a request that failed to parse, so the handler can say so clearly."""

    def __init__(self, error: Exception):
        self.error = error


def _tolerant(deserializer: Callable[[bytes], Any] | None) -> Callable[[bytes], Any] | None:
    if deserializer is None:
        return None

    def parse(data: bytes) -> Any:
        try:
            return deserializer(data)
        except Exception as exc:  # noqa: BLE001 - any parse failure is the client's mistake
            return _Malformed(exc)

    return parse


class _GuardInterceptor(grpc.aio.ServerInterceptor):
    """Auth, malformed-request handling, tenant context and RPC metrics, for every handler.

    gRPC would answer a request that fails to deserialize with INTERNAL; wrapping the
    handler's deserializer lets us answer INVALID_ARGUMENT, which is what the client did.
    """

    def __init__(self, config: ServerConfig):
        # Read config.keys on every call: a router policy reload swaps the key ring.
        self._config = config

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(details)
        if handler is None or handler.request_streaming:
            return handler
        method = details.method
        keys = self._config.keys
        tenant: str | None = ""
        if keys is not None and not method.lstrip("/").startswith(_OPEN_SERVICES):
            key = key_from_metadata(details.invocation_metadata)
            tenant = keys.tenant_for(key) if key is not None else None

        async def admit(request: Any, context: grpc.aio.ServicerContext) -> None:
            if tenant is None:
                if self._config.on_auth_failure is not None:
                    self._config.on_auth_failure(method, request)
                await context.abort(grpc.StatusCode.UNAUTHENTICATED, "missing or unknown API key (send it as x-api-key)")
            if isinstance(request, _Malformed):
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"malformed request: {request.error}")
            current_tenant.set(tenant or "")

        if handler.response_streaming:
            inner_stream = handler.unary_stream

            async def unary_stream(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
                with _observe(method, details.invocation_metadata, context):
                    await admit(request, context)
                    async for message in inner_stream(request, context):
                        yield message

            return grpc.unary_stream_rpc_method_handler(
                unary_stream, _tolerant(handler.request_deserializer), handler.response_serializer
            )

        inner_unary = handler.unary_unary

        async def unary_unary(request: Any, context: grpc.aio.ServicerContext) -> Any:
            with _observe(method, details.invocation_metadata, context):
                await admit(request, context)
                return await inner_unary(request, context)

        return grpc.unary_unary_rpc_method_handler(
            unary_unary, _tolerant(handler.request_deserializer), handler.response_serializer
        )


@contextlib.contextmanager
def _observe(method: str, metadata: Any, context: grpc.aio.ServicerContext) -> Iterator[None]:
    """Times an RPC, counts it by service, method and final status code, and traces it as a SERVER
    span under the caller's trace context (when OpenTelemetry is installed)."""
    service, _, name = method.lstrip("/").rpartition("/")
    started = time.perf_counter()
    failure: type[BaseException] | None = None
    with tracing.server_span(method, metadata) as span:
        try:
            yield
        except BaseException as exc:
            failure = type(exc)
            raise
        finally:
            code = context.code()
            if code is None:
                code = grpc.StatusCode.OK if failure is None else (
                    grpc.StatusCode.CANCELLED if failure is asyncio.CancelledError else grpc.StatusCode.UNKNOWN
                )
            code_name = code.name if isinstance(code, grpc.StatusCode) else str(code)
            RPC_HANDLED.labels(service, name, code_name).inc()
            RPC_SECONDS.labels(service, name).observe(time.perf_counter() - started)
            tracing.set_status(span, code_name, code_name == "OK")


def probe_port(what: str, host: str, port: int) -> PortUnavailable | None:
    """Bind `host:port` on a plain socket, as servers do: why the OS refuses it, else None."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        with socket.socket(family) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as gRPC and uvicorn bind
            probe.bind((host, port))
    except OSError as exc:
        return PortUnavailable.refused(what, f"{host}:{port}", exc)
    return None


def require_free_port(what: str, host: str, port: int) -> None:
    """Raise PortUnavailable now if a server could not listen on `host:port` (0 is always free):
    for servers that would otherwise fail minutes later, or deep inside another process."""
    if port and (refused := probe_port(what, host, port)) is not None:
        raise refused


class GrpcServer:
    """A started grpc.aio server with health, reflection, auth, limits and metrics.

    >>> server = GrpcServer(ServerConfig(port=0))
    >>> await server.start([lambda s: add_GeneratorServicer_to_server(servicer, s)],
    ...                    service_names=["tierlm.v1.Generator"])
    >>> await server.run_until_signal()   # SIGTERM/SIGINT: drain, then return
    """

    def __init__(self, config: ServerConfig):
        self.config = config
        self.health = HealthServicer()
        self._server: grpc.aio.Server | None = None
        self._service_names: list[str] = []
        self._metrics_server: Any = None
        self.port: int = 0
        self.metrics_port: int | None = None

    async def start(self, registrars: Iterable[Registrar], service_names: Iterable[str]) -> None:
        config = self.config
        options = [
            ("grpc.max_receive_message_length", config.max_request_bytes),
            ("grpc.so_reuseport", int(config.reuse_port)),
            *config.extra_options,
        ]
        if config.max_connection_age_s is not None:
            options += [
                ("grpc.max_connection_age_ms", int(config.max_connection_age_s * 1000)),
                # Long enough for the longest stream a tier allows to finish on the old connection.
                ("grpc.max_connection_age_grace_ms", int(max(config.drain_grace_s, 120.0) * 1000)),
            ]
        server = grpc.aio.server(interceptors=[_GuardInterceptor(config)], options=options)
        for register in registrars:
            register(server)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, server)
        self._service_names = list(service_names)
        reflection.enable_server_reflection(
            [*self._service_names, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME],
            server,
        )
        for port in (config.port, config.metrics_port):
            if port is not None and not 0 <= port <= MAX_PORT:
                # gRPC would quietly bind the port number modulo 65536.
                raise ValueError(f"port {port} is out of range 0..{MAX_PORT}")
        address = f"{config.host}:{config.port}"
        try:
            if config.tls is not None:
                self.port = server.add_secure_port(address, config.tls.credentials())
            else:
                self.port = server.add_insecure_port(address)
        except RuntimeError:  # gRPC says only that binding failed; ask the OS why
            refused = probe_port("gRPC", config.host, config.port)
            raise refused or PortUnavailable("gRPC", address, "gRPC could not bind it") from None
        if config.local_socket is not None:
            server.add_insecure_port(f"unix:{config.local_socket}")
        if config.metrics_port is not None:
            try:
                self._metrics_server, _ = start_http_server(config.metrics_port, addr=config.host)
            except OSError as exc:
                await server.stop(0)
                raise PortUnavailable.refused("metrics", f"{config.host}:{config.metrics_port}", exc) from None
            self.metrics_port = self._metrics_server.server_port
        await server.start()
        self._server = server
        await self.set_serving(True)
        log.info("serving %s on %s:%d", ", ".join(self._service_names), config.host, self.port)

    async def set_serving(self, serving: bool) -> None:
        status = health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
        for name in ("", *self._service_names):
            await self.health.set(name, status)

    async def stop(self, grace_s: float | None = None) -> None:
        """Refuse new calls, let in-flight ones finish for up to grace_s, then cancel the rest."""
        if self._server is None:
            return
        await self.health.enter_graceful_shutdown()
        await self._server.stop(self.config.drain_grace_s if grace_s is None else grace_s)
        self._server = None
        if self._metrics_server is not None:
            self._metrics_server.shutdown()
            self._metrics_server.server_close()
            self._metrics_server = None

    async def run_until_signal(self, signals: Iterable[signal.Signals] = (signal.SIGTERM, signal.SIGINT)) -> None:
        """Serve until one of `signals` arrives, then drain and return."""
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        for sig in signals:
            loop.add_signal_handler(sig, stop.set)
        try:
            await stop.wait()
            log.info("draining: waiting up to %.0fs for in-flight calls", self.config.drain_grace_s)
            await self.stop()
        finally:
            for sig in signals:
                loop.remove_signal_handler(sig)
