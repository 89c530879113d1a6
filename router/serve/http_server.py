"""The HTTP server under the OpenAI endpoint: uvicorn, hardened against clients that never finish.

uvicorn limits idle keep-alive time but not how long a client may take to send one request, so a
client trickling a byte every few seconds holds its connection (and a file descriptor) forever. Each
connection here gets a deadline to deliver its request (headers and body) in full, re-armed for
every request on a kept-alive connection, and connections beyond a cap are closed on accept. TLS,
when configured, is uvicorn's own, with the same certificate files as the gRPC port.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl
from dataclasses import dataclass
from functools import partial
from typing import Any

import h11
import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

from tierlm.errors import PortUnavailable
from tierlm.serving import TLSServerFiles

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class HttpOptions:
    """Where and how the OpenAI-compatible endpoint listens."""

    port: int
    host: str = "127.0.0.1"
    # How long a client may take to send one whole request (headers and body).
    read_timeout_s: float = 30.0
    # Open connections beyond this are closed as soon as they are accepted.
    max_connections: int = 1024
    # Seconds an idle kept-alive connection stays open between requests.
    keep_alive_s: int = 5


class _DeadlineH11Protocol(H11Protocol):
    """uvicorn's h11 protocol with a per-request read deadline and a connection cap."""

    def __init__(self, *args: Any, read_timeout_s: float, max_connections: int, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self._read_timeout_s = read_timeout_s
        self._max_connections = max_connections
        self._read_deadline: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        if len(self.connections) > self._max_connections:
            log.warning("refusing an HTTP connection: %d open, the cap is %d", len(self.connections) - 1, self._max_connections)
            transport.close()
            return
        self._arm()

    def data_received(self, data: bytes) -> None:
        if self._read_deadline is None and self.conn.their_state is h11.IDLE:
            self._arm()  # the first bytes of the next request on a kept-alive connection
        super().data_received(data)
        if self.conn.their_state is not h11.IDLE and self.conn.their_state is not h11.SEND_BODY:
            self._disarm()  # the request is in: from here on, the response's pace is ours

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def _arm(self) -> None:
        self._disarm()
        self._read_deadline = self.loop.call_later(self._read_timeout_s, self._too_slow)

    def _disarm(self) -> None:
        if self._read_deadline is not None:
            self._read_deadline.cancel()
            self._read_deadline = None

    def _too_slow(self) -> None:
        self._read_deadline = None
        log.info("closing HTTP connection from %s: no complete request within %.0fs", self.client, self._read_timeout_s)
        self.transport.close()


def _config(app: Any, options: HttpOptions, tls: TLSServerFiles | None) -> uvicorn.Config:
    protocol = partial(_DeadlineH11Protocol, read_timeout_s=options.read_timeout_s, max_connections=options.max_connections)
    tls_options: dict[str, Any] = {}
    if tls is not None:
        tls_options = {"ssl_certfile": str(tls.cert_file), "ssl_keyfile": str(tls.key_file)}
        if tls.client_ca_file is not None:
            tls_options |= {"ssl_ca_certs": str(tls.client_ca_file), "ssl_cert_reqs": ssl.CERT_REQUIRED}
    return uvicorn.Config(
        app, host=options.host, port=options.port, http=protocol, log_level="warning", lifespan="off",
        timeout_keep_alive=options.keep_alive_s, server_header=False, **tls_options,
    )


class HttpServer:
    """uvicorn running inside the current event loop."""

    def __init__(self, server: uvicorn.Server, task: asyncio.Task):
        self._server = server
        self._task = task

    @property
    def port(self) -> int:
        return self._server.servers[0].sockets[0].getsockname()[1]

    async def stop(self) -> None:
        self._server.should_exit = True
        await self._task


async def serve_http(app: Any, options: HttpOptions, tls: TLSServerFiles | None = None) -> HttpServer:
    """Start serving `app`; returns once it listens (raises why it could not, e.g. port in use)."""
    # Bound here rather than by uvicorn, which logs a failed bind and exits the process.
    family = socket.AF_INET6 if ":" in options.host else socket.AF_INET
    try:
        sock = socket.create_server((options.host, options.port), family=family)
    except OSError as exc:
        raise PortUnavailable.refused("OpenAI HTTP", f"{options.host}:{options.port}", exc) from None
    server = uvicorn.Server(_config(app, options, tls))
    task = asyncio.create_task(server.serve(sockets=[sock]))
    while not server.started:
        if task.done():
            task.result()
            raise OSError(f"the HTTP server on {options.host}:{options.port} stopped before it started")
        await asyncio.sleep(0.01)
    return HttpServer(server, task)
