"""Real `tierlm router serve` processes and scripted tier processes on 127.0.0.1 for tests.

A router is started as users start it, its log kept in a file the test can read, and always
stopped; tiers are `tests.support.echo_server` processes answering as ScriptedGenerator does.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from tierlm.router.store import LedgerRow, is_postgres, open_store

REPO = Path(__file__).resolve().parents[2]
TIERLM = [sys.executable, "-m", "tierlm.app.cli"]


class RouterProcess:
    """`tierlm router serve --policy POLICY --store STORE --port 0 ARGS` (and `--http-port 0` with
    ``http``); a context manager that always stops it. The log goes to ``log`` (default: beside
    a SQLite store, else a temporary file)."""

    def __init__(self, policy: Path, store: str | Path, *args: str, http: bool = False, log: Path | None = None):
        self.policy, self.store = policy, store
        if log is None:
            log = Path(tempfile.mkstemp(prefix="tierlm-router-", suffix=".log")[1]) if is_postgres(str(store)) \
                else Path(store).with_suffix(".log")
        self.log_path = log
        command = [*TIERLM, "router", "serve", "--policy", str(policy), "--port", "0", "--store", str(store), *args]
        if http:
            command += ["--http-port", "0"]
        self._log = self.log_path.open("w")
        self.process = subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=self._log, text=True)
        line = self.process.stdout.readline()
        if not line.startswith("ROUTER_PORT"):
            self.stop()
            raise RuntimeError(f"router did not start (exit {self.process.poll()}): {self.log()[-3000:]}")
        words = line.split()
        self.port = int(words[1])
        self.http_port = int(words[3]) if http else None
        self.address = f"127.0.0.1:{self.port}"

    def log(self) -> str:
        return self.log_path.read_text()

    def reload(self, settle_s: float = 0.5) -> None:
        self.process.send_signal(signal.SIGHUP)
        time.sleep(settle_s)

    def alive(self) -> bool:
        return self.process.poll() is None

    def rows(self) -> list[LedgerRow]:
        """The ledger's rows, oldest first, read through a store of its own."""

        async def read() -> list[LedgerRow]:
            store = await open_store(self.store)
            try:
                return await store.rows()
            finally:
                await store.close()

        return asyncio.run(read())

    def stop(self) -> str:
        """Stop the router (SIGTERM, then SIGKILL) and return what it logged (also on later calls)."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if not self._log.closed:
            self._log.close()
        return self.log()

    def __enter__(self) -> RouterProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


@contextlib.contextmanager
def scripted_tiers(*names: str) -> Iterator[dict[str, int]]:
    """A scripted Generator process per name; yields each one's port."""
    processes, ports = [], {}
    try:
        for name in names:
            process = subprocess.Popen([sys.executable, "-m", "tests.support.echo_server", "--kind", "scripted", "--name", name],
                                       cwd=REPO, stdout=subprocess.PIPE, text=True)
            processes.append(process)
            ports[name] = int(process.stdout.readline().split()[-1])
        yield ports
    finally:
        for process in processes:
            process.kill()
            process.wait()
