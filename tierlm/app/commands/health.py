"""`tierlm health`: ask a tierlm server (router, edge node, knn tier) whether it is serving.

The standard grpc.health.v1 check, the same one Kubernetes probes use, from a command line: the
chart's `helm test` pod runs it against the router.
"""

from __future__ import annotations

from pathlib import Path

import grpc
import typer
from grpc_health.v1 import health_pb2, health_pb2_grpc


def health(
    address: str = typer.Option(..., "--address", help="Server address host:port."),
    service: str = typer.Option("", "--service", help="A service name, e.g. tierlm.v1.Router; empty: the whole server."),
    tls: bool = typer.Option(False, "--tls", help="Connect over TLS (system roots unless --ca-file)."),
    ca_file: Path | None = typer.Option(None, "--ca-file", exists=True, dir_okay=False, help="CA of the server's certificate (implies --tls)."),
    timeout_s: float = typer.Option(5.0, "--timeout", min=0.1, help="Seconds to wait for the answer."),
) -> None:
    """Exit 0 when the server at ADDRESS answers the gRPC health check SERVING, 1 otherwise."""
    if tls or ca_file is not None:
        channel = grpc.secure_channel(address, grpc.ssl_channel_credentials(ca_file.read_bytes() if ca_file else None))
    else:
        channel = grpc.insecure_channel(address)
    with channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=service), timeout=timeout_s)
        except grpc.RpcError as exc:
            typer.echo(f"{address}: {exc.code().name}: {exc.details()}", err=True)
            raise typer.Exit(1) from None
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
    typer.echo(f"{address}{' ' + service if service else ''}: {status}")
    if reply.status != health_pb2.HealthCheckResponse.SERVING:
        raise typer.Exit(1)
