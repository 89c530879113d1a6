"""Real `tierlm router serve` processes and scripted tier processes on 127.0.0.1 for tests.

A router is started as users start it, its log kept in a file the test can read, and always
stopped; tiers are `tests.support.echo_server` processes answering as ScriptedGenerator does.
"""

from __future__ import annotations

import contextlib
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
TIERLM = [sys.executable, "-m", "tierlm.app.cli"]


class RouterProcess:
    """`tierlm router serve --port 0 --http-port 0 ...` with `args` added; stop() ends it."""

    def __init__(self, policy: Path, ledger: Path, *args: str, http: bool = True, log: Path | None = None):
        self.log_path = log or ledger.with_suffix(".log")
        command = [*TIERLM, "router", "serve", "--policy", str(policy), "--port", "0", "--ledger", str(ledger), *args]
        if http:
            command += ["--http-port", "0"]
        self._log = self.log_path.open("w")
        self.process = subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=self._log, text=True)
        line = self.process.stdout.readline()
        if not line.startswith("ROUTER_PORT"):
            self.stop()
            raise RuntimeError(f"router did not start (exit {self.process.poll()}): {self.log()}")
        words = line.split()
        self.port = int(words[1])
        self.http_port = int(words[3]) if http else None
        self.address = f"127.0.0.1:{self.port}"

    def log(self) -> str:
        return self.log_path.read_text()

    def reload(self, settle_s: float = 0.5) -> None:
        self.process.send_signal(signal.SIGHUP)
        time.sleep(settle_s)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._log.close()


@contextlib.contextmanager
def router_process(policy: Path, ledger: Path, *args: str, **options) -> Iterator[RouterProcess]:
    router = RouterProcess(policy, ledger, *args, **options)
    try:
        yield router
    finally:
        router.stop()


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
