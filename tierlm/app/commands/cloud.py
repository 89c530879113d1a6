"""`tierlm cloud ...`: run the Ray Serve cloud tier."""

from __future__ import annotations

from pathlib import Path

import typer

from tierlm.app.commands.signals import stop_on_signals

app = typer.Typer(help="Run the cloud tier: a Ray Serve application with vLLM or torch engines.", no_args_is_help=True)


@app.command()
def serve(
    config: Path = typer.Option(..., "--config", exists=True, dir_okay=False, help="cloud.yaml: models, engines, replicas, ports."),
    num_cpus: int | None = typer.Option(None, "--num-cpus", min=1, help="CPUs the local Ray instance may use (default: all)."),
) -> None:
    """Start Ray Serve with the Generator gRPC proxy and serve until SIGTERM/SIGINT."""
    from tierlm.cloud.config import load_cloud_config
    from tierlm.cloud.runner import start_cloud, stop_cloud

    settings = load_cloud_config(config)
    stop = stop_on_signals()
    try:
        endpoints = start_cloud(settings, num_cpus)
        typer.echo(f"CLOUD_GRPC {endpoints.grpc_address} HTTP {endpoints.http_address}", err=False)
        stop.wait()
    finally:
        stop_cloud()
