"""The local stack: the tiers a policy launches, and the router in front of them, as child processes.

`plan_stack` turns a policy into services (a knn tier, edge nodes, the Ray Serve cloud tier,
the router) with their command lines, ports and log files; `LocalStack` starts them, waits
until each answers `grpc.health.v1` as SERVING, and always stops them: SIGTERM in reverse
order (router first, so no request reaches a tier that is going away), SIGKILL after a grace
period, then any descendant still alive (Ray's processes, say) is killed too. Children run in
sessions of their own, so a Ctrl-C in the terminal reaches only the launcher, which then
stops them in order; and they get SIGTERM from the kernel if the launcher dies first.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from tierlm.app import lifeline
from tierlm.config import Policy, TierConfig, load_policy
from tierlm.router.store import is_postgres
from tierlm.serving import require_free_port

log = logging.getLogger(__name__)

# Seconds a service may take to become healthy: Ray Serve starts a cluster and loads the
# model in a replica, the others load one model or an embedding pool.
READY_TIMEOUT_S = {"cloud": 600.0, "default": 300.0}
# Seconds between SIGTERM and SIGKILL: Ray Serve drains its replicas and stops Ray.
STOP_GRACE_S = {"cloud": 60.0, "default": 20.0}


class StackError(RuntimeError):
    """A service did not start or became unhealthy; the message carries its log's tail."""


def free_port(host: str = "127.0.0.1") -> int:
    """A port nothing listens on now (servers that cannot report a bound port 0 need one up front)."""
    with socket.socket() as probe:
        probe.bind((host, 0))
        return probe.getsockname()[1]


@dataclass
class Service:
    """One child process serving gRPC on `port`, its output in `log_path`."""

    name: str
    kind: str  # knn | edge | cloud | router
    argv: list[str]
    port: int
    log_path: Path
    host: str = "127.0.0.1"
    process: subprocess.Popen | None = field(default=None, repr=False)

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def start(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as sink:
            sink.write(f"--- {time.strftime('%Y-%m-%d %H:%M:%S')} {' '.join(self.argv)}\n".encode())
            sink.flush()
            # No preexec_fn: Python between fork and exec is unsafe here (see tierlm.app.lifeline,
            # which asks for SIGTERM on the launcher's death after exec instead).
            self.process = subprocess.Popen(
                lifeline.command(os.getpid(), self.argv), stdin=subprocess.DEVNULL, stdout=sink,
                stderr=subprocess.STDOUT, start_new_session=True,
            )
        log.info("%s: pid %d, log %s", self.name, self.process.pid, self.log_path)

    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def wait_healthy(self, timeout_s: float | None = None) -> None:
        """Poll grpc.health.v1 until SERVING; StackError if the process exits or time runs out."""
        import grpc
        from grpc_health.v1 import health_pb2, health_pb2_grpc

        timeout_s = timeout_s or READY_TIMEOUT_S.get(self.kind, READY_TIMEOUT_S["default"])
        deadline = time.monotonic() + timeout_s
        # Short reconnect backoff: by default a channel that found nothing listening waits up
        # to two minutes before it tries again, long after the service came up.
        options = [("grpc.initial_reconnect_backoff_ms", 250), ("grpc.min_reconnect_backoff_ms", 250),
                   ("grpc.max_reconnect_backoff_ms", 1000)]
        with grpc.insecure_channel(self.address, options) as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            while True:
                if not self.running():
                    code = self.process.returncode if self.process else None
                    raise StackError(f"{self.name} exited (code {code}) before it was healthy; {self.log_path}:\n{self.log_tail()}")
                try:
                    reply = stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=2.0)
                    if reply.status == health_pb2.HealthCheckResponse.SERVING:
                        return
                except grpc.RpcError:
                    pass  # not listening yet
                if time.monotonic() > deadline:
                    raise StackError(f"{self.name} not healthy on {self.address} after {timeout_s:.0f} s; {self.log_path}:\n{self.log_tail()}")
                time.sleep(0.5)

    def kill(self) -> None:
        """SIGKILL the service and its descendants at once (fault injection; `stop` is the clean way)."""
        if self.process is not None:
            _kill_tree(self.process, _descendants(self.process.pid))

    def stop(self, grace_s: float | None = None) -> None:
        """SIGTERM, wait up to grace_s, then SIGKILL; descendants left behind are killed too."""
        process = self.process
        if process is None:
            return
        grace_s = STOP_GRACE_S.get(self.kind, STOP_GRACE_S["default"]) if grace_s is None else grace_s
        family = _descendants(process.pid)
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(grace_s)
            except subprocess.TimeoutExpired:
                log.warning("%s did not stop within %.0f s of SIGTERM: killing it", self.name, grace_s)
        family += [p for p in _descendants(process.pid) if p not in family]
        _kill_tree(process, family, settle_s=5.0)
        self.process = None


def _descendants(pid: int) -> list:
    import psutil

    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []


def _kill_tree(process: subprocess.Popen, family: list, settle_s: float = 0.0) -> None:
    """SIGKILL `process` if alive; give `family` (its descendants) settle_s to exit, then SIGKILL them."""
    import psutil

    if process.poll() is None:
        process.kill()
    process.wait()
    _, alive = psutil.wait_procs(family, timeout=settle_s)
    for child in alive:
        with contextlib.suppress(psutil.NoSuchProcess):
            child.kill()
    psutil.wait_procs(alive, timeout=5.0)


@dataclass
class StackPlan:
    """What `LocalStack` starts: services in start order, the routers last."""

    services: list[Service]
    policy_path: Path  # the policy the router reads: the given one with launched tiers' addresses
    run_dir: Path

    @property
    def routers(self) -> list[Service]:
        return [s for s in self.services if s.kind == "router"]

    @property
    def router(self) -> Service:
        return self.routers[0]

    def service(self, name: str) -> Service:
        return next(s for s in self.services if s.name == name)


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "tierlm.app.cli", *args]


def _tier_service(tier: TierConfig, host: str, port: int, run_dir: Path, pool: Path | None, encoder: str) -> Service:
    from tierlm.router.study.tier_setup import model_folder

    launch = tier.launch
    assert launch is not None
    logs = run_dir / "logs" / f"{tier.name}.log"
    if launch.runtime == "knn":
        if pool is None:
            raise StackError(f"tier {tier.name!r} runs a no-LLM classifier, which learns from the policy's `pool`; set one")
        argv = _cli("knn", "serve", "--pool", str(pool), "--model", tier.model or "knn-vote", "--host", host,
                    "--port", str(port), "--tier-name", tier.name, "--threads", str(launch.threads),
                    "--encoder", encoder, "--no-auth")
    elif launch.runtime == "edge":
        argv = _cli("edge", "serve", "--model", str(model_folder(tier)), "--host", host, "--port", str(port),
                    "--tier-name", tier.name, "--threads", str(launch.threads),
                    "--max-batch", str(launch.max_batch), "--max-queue", str(launch.max_queue), "--no-auth")
    else:
        options = launch.engine_options
        if launch.engine == "torch":
            options = {"threads": launch.threads, "max_batch": launch.max_batch, "max_queue": launch.max_queue} | options
        model = model_folder(tier)
        cloud = {
            "tier_name": tier.name, "host": host, "grpc_port": port, "http_port": free_port(host),
            "models": [{"name": model.name, "path": str(model), "engine": launch.engine, "engine_options": options,
                        "max_ongoing_requests": launch.max_batch + launch.max_queue,
                        "resources": {"num_cpus": launch.threads}}],
        }
        config_path = run_dir / f"cloud-{tier.name}.yaml"
        config_path.write_text(yaml.safe_dump(cloud, sort_keys=False))
        argv = _cli("cloud", "serve", "--config", str(config_path))
        if launch.num_cpus is not None:
            argv += ["--num-cpus", str(launch.num_cpus)]
    return Service(tier.name, launch.runtime, argv, port, logs, host)


def plan_stack(
    policy_path: Path, run_dir: Path, *, router_port: int = 50051, free_ports: bool = False,
    store: str | Path | None = None, tenants: Path | None = None, http_port: int | None = None, routers: int = 1,
    no_auth: bool = False,
) -> StackPlan:
    """Services for every tier of the policy with a `launch` block, and the router(s).

    Several `routers` (replicas on free ports, the first on `router_port` if it is given) share
    one `store`: a PostgreSQL DSN for more than one (default: a SQLite ledger in `run_dir`).

    Launched tiers serve without keys (`--no-auth`): only the router calls them, on the address the
    policy gives (keep it a loopback one). The router asks for tenant keys unless `no_auth`.

    With `free_ports`, launched tiers (and the router, when `router_port` is 0) get free ports
    instead of the policy's; the router then reads a copy of the policy with those addresses,
    written to `run_dir`, as it does in any case (with the scorer path made absolute)."""
    policy: Policy = load_policy(policy_path)
    run_dir.mkdir(parents=True, exist_ok=True)
    document = yaml.safe_load(Path(policy_path).read_text())
    services = []
    # Paths in the derived policy are absolute, so the router may run from any folder.
    pool = Path(policy.pool).resolve() if policy.pool is not None else None
    if pool is not None:
        document["pool"] = str(pool)
    for index, tier in enumerate(policy.tiers):
        if tier.launch is None:
            continue
        host, port = tier.address.rsplit(":", 1)
        port = free_port(host) if free_ports else int(port)
        document["tiers"][index]["address"] = f"{host}:{port}"
        services.append(_tier_service(tier, host, port, run_dir, pool, policy.encoder))
    if policy.scorer is not None:
        document["scorer"]["path"] = str(Path(policy.scorer.path).resolve())
    derived = run_dir / "policy.yaml"
    derived.write_text(yaml.safe_dump(document, sort_keys=False))
    if routers > 1 and (store is None or not is_postgres(str(store))):
        raise StackError("router replicas share their ledger and budgets through PostgreSQL: give a PostgreSQL store")
    for replica in range(routers):
        port = router_port if replica == 0 and router_port else free_port()
        argv = _cli("router", "serve", "--policy", str(derived), "--port", str(port),
                    "--store", str(store or run_dir / "ledger.sqlite"))
        if tenants is not None:
            argv += ["--tenants", str(tenants)]
        if http_port is not None and replica == 0:
            argv += ["--http-port", str(http_port)]
        if no_auth:
            argv.append("--no-auth")
        name = "router" if replica == 0 else f"router-{replica}"
        services.append(Service(name, "router", argv, port, run_dir / "logs" / f"{name}.log"))
    return StackPlan(services, derived, run_dir)


class LocalStack:
    """Start a planned stack, wait until every service is healthy, and always stop it.

    >>> with LocalStack(plan_stack(Path("policy.yaml"), Path("run"), free_ports=True)) as stack:
    ...     Client(stack.router_address).complete("...")
    """

    def __init__(self, plan: StackPlan):
        self.plan = plan

    @property
    def router_address(self) -> str:
        return self.plan.router.address

    @property
    def router_addresses(self) -> list[str]:
        return [router.address for router in self.plan.routers]

    def start(self, on_ready: Callable[[Service], None] | None = None) -> None:
        """Start every service and wait until all are healthy; `on_ready` hears of each in turn."""
        # A taken port fails here in one line, not minutes later in a child's log.
        for service in self.plan.services:
            require_free_port(service.name, service.host, service.port)
        try:
            # Everything loads side by side (the router connects to tiers lazily, so it may
            # come up first); the stack is ready when every service answers health checks.
            for service in self.plan.services:
                service.start()
            for service in self.plan.services:
                service.wait_healthy()
                log.info("%s healthy on %s", service.name, service.address)
                if on_ready is not None:
                    on_ready(service)
        except BaseException:
            self.stop()
            raise

    def restart(self, name: str) -> None:
        """Start a stopped or killed service again on the same port and wait until it is healthy."""
        service = self.plan.service(name)
        if service.running():
            service.stop()
        service.process = None
        service.start()
        service.wait_healthy()

    def stop(self) -> None:
        """Stop every service, router first; never raises for one that already died."""
        for service in reversed(self.plan.services):
            try:
                service.stop()
            except Exception:  # keep stopping the others
                log.exception("stopping %s", service.name)

    def __enter__(self) -> LocalStack:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
