"""Command-line options every `... serve` command shares, turned into a ServerConfig."""

from __future__ import annotations

import logging
from pathlib import Path

import typer

from tierlm.auth import KeyRing
from tierlm.serving import MAX_PORT, ServerConfig, TLSServerFiles

log = logging.getLogger(__name__)

HOST = typer.Option("127.0.0.1", "--host", help="Interface to listen on (0.0.0.0 inside containers).")
METRICS_PORT = typer.Option(None, "--metrics-port", min=0, max=MAX_PORT, help="Serve Prometheus metrics on this port (off if unset).")
TLS_CERT = typer.Option(None, "--tls-cert", exists=True, dir_okay=False, help="PEM certificate; enables TLS with --tls-key.")
TLS_KEY = typer.Option(None, "--tls-key", exists=True, dir_okay=False, help="PEM private key for --tls-cert.")
TLS_CLIENT_CA = typer.Option(None, "--tls-client-ca", exists=True, dir_okay=False, help="Require client certificates signed by this CA.")
MAX_REQUEST_BYTES = typer.Option(1 << 20, "--max-request-bytes", min=1, help="Largest request accepted.")
DRAIN_S = typer.Option(30.0, "--drain-seconds", min=0.0, help="On SIGTERM, how long in-flight calls may finish.")
NO_AUTH = typer.Option(False, "--no-auth", help="Let anyone call, without a key (logged as a warning). Without it, "
                                                 "only keys in the tenants file are accepted; no tenants refuses every call.")
API_KEYS = typer.Option(None, "--api-keys", exists=True, dir_okay=False,
                        help="Tenants file (name -> key_sha256) whose keys may call; required unless --no-auth.")


def key_ring(api_keys: Path | None, no_auth: bool) -> KeyRing | None:
    """The keys a tier server accepts: from --api-keys, or none at all with an explicit --no-auth."""
    if no_auth:
        if api_keys is not None:
            raise typer.BadParameter("--api-keys and --no-auth contradict each other", param_hint="--no-auth")
        log.warning("authentication is OFF (--no-auth): anyone who reaches this server may call it")
        return None
    if api_keys is None:
        raise typer.BadParameter("give --api-keys FILE, or --no-auth to serve without keys (e.g. behind a NetworkPolicy)",
                                 param_hint="--api-keys")
    from tierlm.config import load_tenants

    ring = KeyRing({t.key_sha256: name for name, t in load_tenants(api_keys).items()})
    if not len(ring):
        log.warning("%s lists no keys: every call will be refused", api_keys)
    return ring


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
