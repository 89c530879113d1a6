"""The cost ledger: one SQLite row per routed request, surviving restarts (WAL mode)."""

from __future__ import annotations

import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path

_SCHEMA = """
CREATE TABLE IF NOT EXISTS requests (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    request_id TEXT NOT NULL,      -- the client's id, or one the router made
    ts REAL NOT NULL,              -- unix seconds when the request finished
    tenant TEXT NOT NULL,
    tiers TEXT NOT NULL,           -- tiers called, in order, comma-separated
    accepted_tier TEXT NOT NULL,   -- '' when no tier answered
    prompt_tokens INTEGER NOT NULL,
    completion_tokens INTEGER NOT NULL,
    cost REAL NOT NULL,            -- every attempt, accepted or not
    latency_ms REAL NOT NULL,
    outcome TEXT NOT NULL          -- 'OK' or the gRPC status name the client got
);
CREATE INDEX IF NOT EXISTS requests_tenant_ts ON requests (tenant, ts);
"""


@dataclass(frozen=True)
class LedgerRow:
    request_id: str
    tenant: str
    tiers: list[str]
    accepted_tier: str
    prompt_tokens: int
    completion_tokens: int
    cost: float
    latency_ms: float
    outcome: str
    ts: float = 0.0


@dataclass(frozen=True)
class LedgerSummary:
    tenant: str
    requests: int
    ok: int
    cost: float
    prompt_tokens: int
    completion_tokens: int
    by_tier: dict[str, int]


class Ledger:
    """Append-only request log. Writes are small and synchronous: one commit per request."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        # WAL + NORMAL: a crash may lose the last commits' fsync, never corrupt the file.
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(_SCHEMA)

    def record(self, row: LedgerRow) -> None:
        self._db.execute(
            "INSERT INTO requests (request_id, ts, tenant, tiers, accepted_tier, prompt_tokens, completion_tokens,"
            " cost, latency_ms, outcome) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                row.request_id, row.ts or time.time(), row.tenant, ",".join(row.tiers), row.accepted_tier,
                row.prompt_tokens, row.completion_tokens, row.cost, row.latency_ms, row.outcome,
            ),
        )

    def spent_since(self, tenant: str, since_ts: float) -> float:
        (total,) = self._db.execute(
            "SELECT COALESCE(SUM(cost), 0) FROM requests WHERE tenant = ? AND ts >= ?", (tenant, since_ts)
        ).fetchone()
        return float(total)

    def count(self) -> int:
        return int(self._db.execute("SELECT COUNT(*) FROM requests").fetchone()[0])

    def summarize(self, tenant: str, since_ts: float = 0.0) -> LedgerSummary:
        requests, ok, cost, prompt, completion = self._db.execute(
            "SELECT COUNT(*), COALESCE(SUM(outcome = 'OK'), 0), COALESCE(SUM(cost), 0),"
            " COALESCE(SUM(prompt_tokens), 0), COALESCE(SUM(completion_tokens), 0)"
            " FROM requests WHERE tenant = ? AND ts >= ?",
            (tenant, since_ts),
        ).fetchone()
        by_tier = dict(
            self._db.execute(
                "SELECT accepted_tier, COUNT(*) FROM requests WHERE tenant = ? AND ts >= ? AND accepted_tier != ''"
                " GROUP BY accepted_tier",
                (tenant, since_ts),
            ).fetchall()
        )
        return LedgerSummary(tenant, int(requests), int(ok), float(cost), int(prompt), int(completion), by_tier)

    def close(self) -> None:
        self._db.close()
