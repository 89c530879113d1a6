"""`tierlm router serve --workers N`: N router processes on one port, sharing one store.

One Python process routes on one core (its event loop, the GIL). Workers are whole routers in
processes of their own, each listening on the same port with SO_REUSEPORT, so the kernel spreads
incoming connections across them (gunicorn's and uvicorn's ``--workers`` model, without a
master process in the request path). They share state through the store, which is built for it:
SQLite in WAL mode with one ``BEGIN IMMEDIATE`` transaction per reservation (one machine), or
PostgreSQL (many). Every ledger row names the worker that wrote it (``host:pid``).

The supervisor (this process) builds what every worker would otherwise build at once (the
encoder graphs, the retrieval pool's embeddings in the disk cache), holds the port while the
workers start, forwards SIGTERM/SIGINT (drain and stop) and SIGHUP (reload the policy) to them,
and starts a worker again if one dies. Workers are spawned, never forked: gRPC, onnxruntime and
SQLite do not survive a fork, and each worker must get a ledger id of its own.
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import os
import queue
import signal
import socket
import time
from collections.abc import Callable
from dataclasses import replace
from multiprocessing.connection import wait
from pathlib import Path

from tierlm.config import load_policy
from tierlm.serving import ServerConfig

log = logging.getLogger(__name__)

#: How long a worker may take to start serving (building the encoder graph on a cold cache
#: included) before the supervisor gives up.
START_TIMEOUT_S = 300.0
#: A worker that dies sooner than this after its start is not restarted (it would only die again).
MIN_UPTIME_S = 10.0


def prepare_shared(policy_path: Path) -> None:
    """Build, once, what each worker would otherwise build at the same time: the encoder graphs
    and the retrieval pool's embeddings (both cached on disk)."""
    from tierlm.router.encoder_choice import rescores, serving_encoder
    from tierlm.router.onnx_encoder import prepare_encoder
    from tierlm.router.serve.prompts import needs_encoder, policy_pool, pool_index

    policy = load_policy(policy_path)
    if not needs_encoder(policy):
        return
    if rescores(policy):
        prepare_encoder(precision="float32")
    pool_index(policy, policy_pool(policy), serving_encoder(policy))


def reserve_port(host: str, port: int) -> socket.socket:
    """A socket bound (not listening) to ``host:port`` with SO_REUSEPORT: it holds the port (and
    picks a free one for port 0) while the workers bind it too; no connection ever reaches it."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    holder = socket.socket(family, socket.SOCK_STREAM)
    holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    try:
        holder.bind((host, port))
    except OSError:
        holder.close()
        raise
    return holder


def _worker(policy_path: Path, config: ServerConfig, store: str, tenants_path: Path | None, auth: bool, started,
            log_level: int) -> None:
    """One worker: a whole router on the shared port, until SIGTERM."""
    from tierlm.router.serve.server import serve

    logging.basicConfig(level=log_level, format=f"%(asctime)s worker {os.getpid()} %(levelname)s %(name)s: %(message)s")
    asyncio.run(serve(policy_path, config, store, tenants_path, ready=lambda server, _http: started.put(server.port), auth=auth))


class Workers:
    """The supervisor of ``count`` router workers; :meth:`run` returns when they have stopped.

    Args:
        count: worker processes.
        config: each worker's server settings; the port is shared, a metrics port is the first
            of ``count`` consecutive ones (worker ``i`` serves metrics on ``metrics_port + i``).
    """

    def __init__(self, count: int, policy_path: Path, config: ServerConfig, store: str | Path,
                 tenants_path: Path | None = None, *, auth: bool = True):
        if count < 1:
            raise ValueError(f"need at least one worker, got {count}")
        self.count = count
        self.policy_path, self.config, self.store, self.tenants_path = policy_path, config, str(store), tenants_path
        self.auth = auth
        self._context = multiprocessing.get_context("spawn")
        self._started = self._context.Queue()
        self._processes: list[tuple[multiprocessing.Process, float]] = []
        self._stopping = False
        self.port: int = config.port

    def _spawn(self, index: int) -> tuple[multiprocessing.Process, float]:
        metrics = None if self.config.metrics_port is None else self.config.metrics_port + index
        config = replace(self.config, port=self.port, reuse_port=True, metrics_port=metrics)
        process = self._context.Process(
            target=_worker,
            args=(self.policy_path, config, self.store, self.tenants_path, self.auth, self._started, logging.getLogger().getEffectiveLevel()),
            name=f"tierlm-router-{index}", daemon=False,
        )
        process.start()
        return process, time.monotonic()

    def start(self) -> int:
        """Prepare the shared files, start every worker and wait until all serve; returns the port."""
        prepare_shared(self.policy_path)
        holder = reserve_port(self.config.host, self.config.port)
        self.port = holder.getsockname()[1]
        try:
            self._processes = [self._spawn(i) for i in range(self.count)]
            deadline = time.monotonic() + START_TIMEOUT_S
            for _ in range(self.count):
                self._await_start(deadline)
        except BaseException:
            self.stop()
            raise
        finally:
            holder.close()
        return self.port

    def _await_start(self, deadline: float) -> None:
        while True:
            dead = [p for p, _ in self._processes if p.exitcode is not None]
            if dead:
                raise RuntimeError(f"router worker {dead[0].name} exited with code {dead[0].exitcode} while starting")
            try:
                self._started.get(timeout=min(0.5, max(deadline - time.monotonic(), 0.01)))
                return
            except queue.Empty:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"router workers did not start within {START_TIMEOUT_S:.0f} s") from None

    def signal_all(self, signum: int) -> None:
        for process, _ in self._processes:
            if process.exitcode is None:
                os.kill(process.pid, signum)

    def stop(self) -> None:
        """SIGTERM every worker (each drains its calls and books its requests) and wait."""
        self._stopping = True
        self.signal_all(signal.SIGTERM)
        for process, _ in self._processes:
            process.join(self.config.drain_grace_s + 30.0)
            if process.exitcode is None:
                process.kill()
                process.join()

    def run(self) -> None:
        """Supervise until SIGTERM/SIGINT: forward SIGHUP, restart a worker that dies."""
        previous = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)}
        signal.signal(signal.SIGTERM, lambda *_: setattr(self, "_stopping", True))
        signal.signal(signal.SIGINT, lambda *_: setattr(self, "_stopping", True))
        signal.signal(signal.SIGHUP, lambda *_: self.signal_all(signal.SIGHUP))
        try:
            while not self._stopping:
                wait([p.sentinel for p, _ in self._processes], timeout=0.5)
                for index, (process, started) in enumerate(self._processes):
                    if process.exitcode is None or self._stopping:
                        continue
                    if time.monotonic() - started < MIN_UPTIME_S:
                        log.error("router worker %s exited with code %s right after starting; stopping", process.name, process.exitcode)
                        self._stopping = True
                        break
                    log.error("router worker %s exited with code %s; starting it again", process.name, process.exitcode)
                    self._processes[index] = self._spawn(index)
        finally:
            self.stop()
            for sig, handler in previous.items():
                signal.signal(sig, handler)


def serve_workers(count: int, policy_path: Path, config: ServerConfig, store: str | Path, tenants_path: Path | None,
                  ready: Callable[[int], None], *, auth: bool = True) -> None:
    """Run ``count`` router workers on ``config.port`` until SIGTERM/SIGINT; ``ready(port)`` once
    every one of them serves."""
    workers = Workers(count, policy_path, config, store, tenants_path, auth=auth)
    workers.start()
    ready(workers.port)
    workers.run()
