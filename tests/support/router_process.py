"""A real `tierlm router serve` process for tests: started on a free port, always stopped."""

from __future__ import annotations

import contextlib
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

from tierlm.router.serve.ledger import LedgerRow

REPO = Path(__file__).resolve().parents[2]


class RouterProcess:
    """`tierlm router serve --policy POLICY` on 127.0.0.1 with its own ledger; a context manager."""

    def __init__(self, policy: Path, ledger: Path, *extra: str):
        self.policy, self.ledger_path = policy, ledger
        self.log: str | None = None
        self.process = subprocess.Popen(
            [sys.executable, "-m", "tierlm.app.cli", "router", "serve", "--policy", str(policy), "--port", "0",
             "--ledger", str(ledger), *extra],
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
        """The ledger's rows, oldest first, read with plain SQL through a second connection."""
        with contextlib.closing(sqlite3.connect(self.ledger_path)) as db:
            found = db.execute(
                "SELECT request_id, tenant, tiers, accepted_tier, prompt_tokens, completion_tokens, cost, latency_ms, outcome"
                " FROM requests ORDER BY id"
            ).fetchall()
        return [LedgerRow(r[0], r[1], r[2].split(",") if r[2] else [], *r[3:]) for r in found]

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
