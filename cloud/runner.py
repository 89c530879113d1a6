"""Start and stop the cloud tier locally: a Ray instance, Serve's proxies and the app."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from tierlm.cloud.config import CloudConfig

log = logging.getLogger(__name__)

APP_NAME = "tierlm-cloud"


@dataclass(frozen=True)
class CloudEndpoints:
    grpc_address: str
    http_address: str


def start_cloud(config: CloudConfig, num_cpus: int | None = None) -> CloudEndpoints:
    """Start Ray (if this process has none), Serve with its gRPC proxy, and the app; block until ready."""
    import ray
    from ray import serve
    from ray.serve.config import gRPCOptions

    from tierlm.cloud.app import GRPC_SERVICER_FUNCTIONS, build_app

    if not ray.is_initialized():
        # Replicas import tierlm from the installed package, so no working_dir upload.
        ray.init(num_cpus=num_cpus, include_dashboard=False, log_to_driver=False)
    serve.start(
        http_options={"host": config.host, "port": config.http_port},
        grpc_options=gRPCOptions(port=config.grpc_port, grpc_servicer_functions=GRPC_SERVICER_FUNCTIONS),
    )
    serve.run(build_app(config), name=APP_NAME, route_prefix="/", blocking=False)
    log.info("cloud tier up: gRPC %s:%d, HTTP %s:%d", config.host, config.grpc_port, config.host, config.http_port)
    return CloudEndpoints(f"{config.host}:{config.grpc_port}", f"http://{config.host}:{config.http_port}")


def stop_cloud() -> None:
    """Shut Serve down (replicas get their graceful shutdown) and stop this process's Ray."""
    import ray
    from ray import serve

    if ray.is_initialized():
        serve.shutdown()
        ray.shutdown()
