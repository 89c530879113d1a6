"""Start and stop the cloud tier locally: a Ray instance, Serve's proxies and the app."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

from tierlm.cloud.config import CloudConfig
from tierlm.serving import require_free_port

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
    from tierlm.sockets import RAY_SOCKET_TAIL, socket_root

    # Serve's proxies bind these inside Ray actors, where a taken port surfaces as a hang or a
    # traceback from another process; check them before starting anything.
    require_free_port("Serve gRPC", config.host, config.grpc_port)
    require_free_port("Serve HTTP", config.host, config.http_port)
    if not ray.is_initialized():
        # Replicas import tierlm from the installed package, so no working_dir upload.
        # $RAY_TMPDIR, when set, is the operator's choice; else the temp folder if its socket paths fit.
        temp_dir = None if "RAY_TMPDIR" in os.environ else os.path.join(socket_root(RAY_SOCKET_TAIL), "ray")
        # address="local": a cluster of this process's own, never one that `ray start` (or another
        # user on a shared machine) left in <temp>/ray/ray_current_cluster or $RAY_ADDRESS.
        try:
            ray.init(address="local", num_cpus=num_cpus, include_dashboard=False, log_to_driver=False, _temp_dir=temp_dir)
        except Exception:
            _log_ray_startup_logs(temp_dir or os.path.join(os.environ["RAY_TMPDIR"], "ray"))
            raise
    serve.start(
        http_options={"host": config.host, "port": config.http_port},
        grpc_options=gRPCOptions(port=config.grpc_port, grpc_servicer_functions=GRPC_SERVICER_FUNCTIONS),
    )
    serve.run(build_app(config), name=APP_NAME, route_prefix="/", blocking=False)
    log.info("cloud tier up: gRPC %s:%d, HTTP %s:%d", config.host, config.grpc_port, config.host, config.http_port)
    return CloudEndpoints(f"{config.host}:{config.grpc_port}", f"http://{config.host}:{config.http_port}")


def _log_ray_startup_logs(temp_dir: str, lines: int = 20) -> None:
    """Ray's own error ("the raylet failed to startup or the GCS has become overloaded") does not
    say which; the tails of its processes' logs do, and on a CI machine nobody can look later."""
    logs = Path(temp_dir) / "session_latest" / "logs"
    for name in ("raylet.err", "raylet.out", "gcs_server.err", "dashboard_agent.log"):
        path = logs / name
        if path.is_file():
            tail = path.read_text(errors="replace").splitlines()[-lines:]
            log.error("Ray did not start; the end of %s:\n%s", path, "\n".join(tail))


def stop_cloud() -> None:
    """Shut Serve down (replicas get their graceful shutdown) and stop this process's Ray."""
    import ray
    from ray import serve

    if ray.is_initialized():
        serve.shutdown()
        ray.shutdown()
