"""Command-line options every `... serve` command shares, turned into a ServerConfig."""

from __future__ import annotations

from pathlib import Path

import typer

from tierlm.serving import MAX_PORT, ServerConfig, TLSServerFiles

HOST = typer.Option("127.0.0.1", "--host", help="Interface to listen on (0.0.0.0 inside containers).")
METRICS_PORT = typer.Option(None, "--metrics-port", min=0, max=MAX_PORT, help="Serve Prometheus metrics on this port (off if unset).")
TLS_CERT = typer.Option(None, "--tls-cert", exists=True, dir_okay=False, help="PEM certificate; enables TLS with --tls-key.")
TLS_KEY = typer.Option(None, "--tls-key", exists=True, dir_okay=False, help="PEM private key for --tls-cert.")
TLS_CLIENT_CA = typer.Option(None, "--tls-client-ca", exists=True, dir_okay=False, help="Require client certificates signed by this CA.")
MAX_REQUEST_BYTES = typer.Option(1 << 20, "--max-request-bytes", min=1, help="Largest request accepted.")
DRAIN_S = typer.Option(30.0, "--drain-seconds", min=0.0, help="On SIGTERM, how long in-flight calls may finish.")


def server_config(
    host: str,
    port: int,
    metrics_port: int | None,
    tls_cert: Path | None,
    tls_key: Path | None,
    tls_client_ca: Path | None,
    max_request_bytes: int,
    drain_s: float,
) -> ServerConfig:
    if (tls_cert is None) != (tls_key is None):
        raise typer.BadParameter("--tls-cert and --tls-key go together")
    tls = TLSServerFiles(tls_cert, tls_key, tls_client_ca) if tls_cert and tls_key else None
    return ServerConfig(
        host=host, port=port, metrics_port=metrics_port, tls=tls, max_request_bytes=max_request_bytes, drain_grace_s=drain_s
    )
