"""A real `tierlm router serve` process for tests: started on a free port, always stopped."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
from pathlib import Path

from tierlm.router.store import LedgerRow, open_store

REPO = Path(__file__).resolve().parents[2]


class RouterProcess:
    """`tierlm router serve --policy POLICY --store STORE` on 127.0.0.1; a context manager."""

    def __init__(self, policy: Path, store: str | Path, *extra: str):
        self.policy, self.store = policy, store
        self.log: str | None = None
        self.process = subprocess.Popen(
            [sys.executable, "-m", "tierlm.app.cli", "router", "serve", "--policy", str(policy), "--port", "0",
             "--store", str(store), *extra],
            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        line = self.process.stdout.readline()
        if not line.startswith("ROUTER_PORT"):
            self.stop()
            raise RuntimeError(f"router did not start: {line!r} {self.process.stderr.read()[-3000:]}")
        self.port = int(line.split()[1])
        self.address = f"127.0.0.1:{self.port}"

    def reload(self) -> None:
        self.process.send_signal(signal.SIGHUP)

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
        if self.log is None:
            if self.process.poll() is None:
                self.process.send_signal(signal.SIGTERM)
                try:
                    self.process.wait(20)
                except subprocess.TimeoutExpired:
                    self.process.kill()
                    self.process.wait()
            self.log = self.process.stderr.read()
        return self.log

    def __enter__(self) -> RouterProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
