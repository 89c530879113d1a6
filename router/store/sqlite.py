"""The store in one SQLite file: the embedded default for a router on one machine.

Every call runs on one worker thread (SQLite connections are not shared across threads, and
the event loop never waits on a disk write); each reservation is one ``BEGIN IMMEDIATE``
transaction, which locks the file, so router worker processes sharing the file (WAL mode) are
serialised by SQLite itself. The schema is versioned with ``PRAGMA user_version``; a file written
by a newer router is refused.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import TypeVar

from tierlm.router.store.base import (
    DAY_S,
    DuplicateRequest,
    Labelled,
    LedgerRow,
    LedgerSummary,
    NotYourRequest,
    Reservation,
    UnknownRequest,
    Verdict,
    day_of,
    over_budget,
)

T = TypeVar("T")

#: Schema migrations, applied in order; version N is the state after MIGRATIONS[N - 1].
MIGRATIONS = (
    # 1: the ledger of earlier releases.
    """
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
    """,
    # 2: one row per request id, budget books and reservations with leases.
    """
    DELETE FROM requests WHERE id NOT IN (SELECT MAX(id) FROM requests GROUP BY request_id);
    CREATE UNIQUE INDEX requests_request_id ON requests (request_id);
    CREATE TABLE budget_books (
        tenant TEXT NOT NULL,
        day INTEGER NOT NULL,          -- UTC days since the epoch
        spent REAL NOT NULL,           -- settled cost of the day
        held REAL NOT NULL,            -- worst-case cost of requests in flight
        PRIMARY KEY (tenant, day)
    );
    CREATE TABLE reservations (
        request_id TEXT PRIMARY KEY,
        tenant TEXT NOT NULL,
        day INTEGER NOT NULL,
        amount REAL NOT NULL,
        state TEXT NOT NULL CHECK (state IN ('held', 'settled', 'expired')),
        lease_until REAL NOT NULL
    );
    CREATE INDEX reservations_held ON reservations (lease_until) WHERE state = 'held';
    """,
    # 3: which replica wrote each row.
    """
    ALTER TABLE requests ADD COLUMN router TEXT NOT NULL DEFAULT '';
    """,
    # 4: learning from live traffic: what the router saw, feedback, exploration, policy decisions.
    """
    ALTER TABLE requests ADD COLUMN details TEXT;
    CREATE TABLE feedback (
        request_id TEXT PRIMARY KEY,
        tenant TEXT NOT NULL,
        ts REAL NOT NULL,
        correct INTEGER,               -- 1 / 0, or NULL when the verdict is a score or a reference
        score REAL,
        reference TEXT
    );
    CREATE TABLE explored (
        request_id TEXT NOT NULL,
        answer TEXT NOT NULL           -- JSON: one tier's answer, got by exploration
    );
    CREATE INDEX explored_request ON explored (request_id);
    CREATE TABLE policy_decisions (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        ts REAL NOT NULL,
        action TEXT NOT NULL,          -- promoted, rejected, rolled back
        policy TEXT NOT NULL,          -- the policy file's version
        numbers TEXT NOT NULL          -- JSON: the shadow test's estimates and intervals
    );
    """,
)

_UPSERT_ROW = """
INSERT INTO requests (request_id, ts, tenant, tiers, accepted_tier, prompt_tokens, completion_tokens, cost, latency_ms, outcome, router,
                      details)
VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
ON CONFLICT (request_id) DO UPDATE SET
    ts = excluded.ts, tenant = excluded.tenant, tiers = excluded.tiers, accepted_tier = excluded.accepted_tier,
    prompt_tokens = excluded.prompt_tokens, completion_tokens = excluded.completion_tokens, cost = excluded.cost,
    latency_ms = excluded.latency_ms, outcome = excluded.outcome, router = excluded.router, details = excluded.details
WHERE requests.outcome != 'OK'
"""


class SqliteStore:
    def __init__(self, path: str | Path, clock: Callable[[], float] = time.time):
        self.path = Path(path)
        self._clock = clock
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="tierlm-store")
        self._db: sqlite3.Connection | None = None
        self._run_sync(self._open)

    # -- the Store interface ----------------------------------------------------------------

    async def reserve(self, request_id: str, tenant: str, amount: float, budget_per_day: float, lease_s: float) -> Reservation:
        return await self._run(self._reserve, request_id, tenant, amount, budget_per_day, lease_s)

    async def finish(self, row: LedgerRow, reservation: Reservation | None) -> None:
        await self._run(self._finish, row, reservation)

    async def release_expired(self) -> int:
        return await self._run(self._release_expired)

    async def summarize(self, tenant: str, since_unix_s: float = 0.0) -> LedgerSummary:
        return await self._run(self._summarize, tenant, since_unix_s)

    async def rows(self, since_unix_s: float = 0.0) -> list[LedgerRow]:
        return await self._run(self._rows, since_unix_s)

    async def give_feedback(self, request_id: str, tenant: str, verdict: Verdict) -> bool:
        return await self._run(self._give_feedback, request_id, tenant, verdict)

    async def record_explored(self, request_id: str, answers: Sequence[str]) -> None:
        await self._run(self._record_explored, request_id, list(answers))

    async def labelled(self, since_unix_s: float = 0.0, request_id: str | None = None) -> list[Labelled]:
        return await self._run(self._labelled, since_unix_s, request_id)

    async def log_decision(self, action: str, policy: str, numbers: str) -> None:
        await self._run(self._log_decision, action, policy, numbers)

    async def close(self) -> None:
        await self._run(self._close)
        self._thread.shutdown(wait=True)

    # -- on the store's thread --------------------------------------------------------------

    async def _run(self, fn: Callable[..., T], *args: object) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._thread, fn, *args)

    def _run_sync(self, fn: Callable[..., T], *args: object) -> T:
        return self._thread.submit(fn, *args).result()

    def _open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(self.path, isolation_level=None, timeout=30.0)
        db.execute("PRAGMA journal_mode=WAL")
        # WAL + NORMAL: a crash may lose the last commits' fsync, never corrupt the file.
        db.execute("PRAGMA synchronous=NORMAL")
        db.execute("BEGIN IMMEDIATE")
        try:
            (version,) = db.execute("PRAGMA user_version").fetchone()
            if version > len(MIGRATIONS):
                raise RuntimeError(f"{self.path}: schema version {version} is newer than this router knows "
                                   f"({len(MIGRATIONS)}); run a newer tierlm")
            for number in range(version, len(MIGRATIONS)):
                for statement in MIGRATIONS[number].split(";"):
                    if statement.strip():
                        db.execute(statement)
            db.execute(f"PRAGMA user_version = {len(MIGRATIONS)}")
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            db.close()
            raise
        self._db = db

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        """One write transaction (BEGIN IMMEDIATE takes the file's write lock at once, so other
        processes on the same file wait instead of failing later); committed unless it raises."""
        assert self._db is not None, "the store is closed"
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield self._db
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    def _reserve(self, request_id: str, tenant: str, amount: float, budget_per_day: float, lease_s: float) -> Reservation:
        now = self._clock()
        day = day_of(now)
        with self._transaction() as db:
            existing = db.execute("SELECT state, day, amount FROM reservations WHERE request_id = ?", (request_id,)).fetchone()
            if existing is not None and existing[0] == "settled":
                raise DuplicateRequest(f"request id {request_id!r} was already answered and billed; send a new id")
            if existing is not None and existing[0] == "held":
                # The same request again (its router died, or a client retry): take the hold over.
                db.execute("UPDATE reservations SET lease_until = ? WHERE request_id = ?", (now + lease_s, request_id))
                return Reservation(request_id, tenant, existing[1], existing[2])
            spent, held = self._book(db, tenant, day)
            if spent + held + amount > budget_per_day:
                raise over_budget(tenant, budget_per_day, spent, held, amount)
            db.execute(
                "INSERT INTO reservations (request_id, tenant, day, amount, state, lease_until) VALUES (?, ?, ?, ?, 'held', ?)"
                " ON CONFLICT (request_id) DO UPDATE SET day = excluded.day, amount = excluded.amount, state = 'held',"
                " lease_until = excluded.lease_until",
                (request_id, tenant, day, amount, now + lease_s),
            )
            db.execute("UPDATE budget_books SET held = held + ? WHERE tenant = ? AND day = ?", (amount, tenant, day))
        return Reservation(request_id, tenant, day, amount)

    def _book(self, db: sqlite3.Connection, tenant: str, day: int) -> tuple[float, float]:
        """The day's book, started from the ledger's spend on its first use."""
        db.execute(
            "INSERT OR IGNORE INTO budget_books (tenant, day, spent, held) SELECT ?, ?, COALESCE(SUM(cost), 0), 0"
            " FROM requests WHERE tenant = ? AND ts >= ? AND ts < ?",
            (tenant, day, tenant, day * DAY_S, (day + 1) * DAY_S),
        )
        return db.execute("SELECT spent, held FROM budget_books WHERE tenant = ? AND day = ?", (tenant, day)).fetchone()

    def _finish(self, row: LedgerRow, reservation: Reservation | None) -> None:
        with self._transaction() as db:
            if reservation is not None:
                state = db.execute(
                    "SELECT state FROM reservations WHERE request_id = ?", (reservation.request_id,)
                ).fetchone()
                if state is not None and state[0] != "settled":
                    released = reservation.amount if state[0] == "held" else 0.0
                    db.execute("UPDATE reservations SET state = 'settled' WHERE request_id = ?", (reservation.request_id,))
                    db.execute(
                        "UPDATE budget_books SET held = held - ?, spent = spent + ? WHERE tenant = ? AND day = ?",
                        (released, row.cost, reservation.tenant, reservation.day),
                    )
            else:
                db.execute(
                    "UPDATE budget_books SET spent = spent + ? WHERE tenant = ? AND day = ?",
                    (row.cost, row.tenant, day_of(row.ts)),
                )
            db.execute(_UPSERT_ROW, (
                row.request_id, row.ts, row.tenant, ",".join(row.tiers), row.accepted_tier, row.prompt_tokens,
                row.completion_tokens, row.cost, row.latency_ms, row.outcome, row.router, row.details,
            ))

    def _release_expired(self) -> int:
        with self._transaction() as db:
            expired = db.execute(
                "SELECT request_id, tenant, day, amount FROM reservations WHERE state = 'held' AND lease_until < ?",
                (self._clock(),),
            ).fetchall()
            for request_id, tenant, day, amount in expired:
                db.execute("UPDATE reservations SET state = 'expired' WHERE request_id = ?", (request_id,))
                db.execute("UPDATE budget_books SET held = held - ? WHERE tenant = ? AND day = ?", (amount, tenant, day))
        return len(expired)

    def _summarize(self, tenant: str, since_unix_s: float) -> LedgerSummary:
        assert self._db is not None
        requests, ok, cost, prompt, completion = self._db.execute(
            "SELECT COUNT(*), COALESCE(SUM(outcome = 'OK'), 0), COALESCE(SUM(cost), 0),"
            " COALESCE(SUM(prompt_tokens), 0), COALESCE(SUM(completion_tokens), 0)"
            " FROM requests WHERE tenant = ? AND ts >= ?",
            (tenant, since_unix_s),
        ).fetchone()
        by_tier = dict(self._db.execute(
            "SELECT accepted_tier, COUNT(*) FROM requests WHERE tenant = ? AND ts >= ? AND accepted_tier != ''"
            " GROUP BY accepted_tier",
            (tenant, since_unix_s),
        ).fetchall())
        return LedgerSummary(tenant, int(requests), int(ok), float(cost), int(prompt), int(completion), by_tier)

    def _rows(self, since_unix_s: float) -> list[LedgerRow]:
        assert self._db is not None
        found = self._db.execute(
            "SELECT request_id, tenant, tiers, accepted_tier, prompt_tokens, completion_tokens, cost, latency_ms, outcome, ts,"
            " router, details FROM requests WHERE ts >= ? ORDER BY id",
            (since_unix_s,),
        ).fetchall()
        return [LedgerRow(r[0], r[1], r[2].split(",") if r[2] else [], *r[3:]) for r in found]

    def _give_feedback(self, request_id: str, tenant: str, verdict: Verdict) -> bool:
        with self._transaction() as db:
            owner = db.execute("SELECT tenant FROM requests WHERE request_id = ?", (request_id,)).fetchone()
            if owner is None:
                raise UnknownRequest(f"no request {request_id!r}")
            if owner[0] != tenant:
                raise NotYourRequest(f"request {request_id!r} is not tenant {tenant!r}'s")
            stored = db.execute(
                "INSERT INTO feedback (request_id, tenant, ts, correct, score, reference) VALUES (?, ?, ?, ?, ?, ?)"
                " ON CONFLICT (request_id) DO NOTHING",
                (request_id, tenant, self._clock(), verdict.correct, verdict.score, verdict.reference),
            ).rowcount
        return stored == 1

    def _record_explored(self, request_id: str, answers: list[str]) -> None:
        with self._transaction() as db:
            db.executemany("INSERT INTO explored (request_id, answer) VALUES (?, ?)", [(request_id, a) for a in answers])

    def _labelled(self, since_unix_s: float, request_id: str | None) -> list[Labelled]:
        assert self._db is not None
        found = self._db.execute(
            "SELECT r.request_id, r.tenant, r.ts, r.details, f.correct, f.score, f.reference FROM requests AS r"
            " JOIN feedback AS f ON f.request_id = r.request_id WHERE r.ts >= ? AND r.details IS NOT NULL"
            " AND (? IS NULL OR r.request_id = ?) ORDER BY r.ts",
            (since_unix_s, request_id, request_id),
        ).fetchall()
        explored: dict[str, list[str]] = {}
        for found_id, answer in self._db.execute(
            "SELECT e.request_id, e.answer FROM explored AS e JOIN requests AS r ON r.request_id = e.request_id"
            " WHERE r.ts >= ? AND (? IS NULL OR r.request_id = ?)", (since_unix_s, request_id, request_id)
        ):
            explored.setdefault(found_id, []).append(answer)
        return [
            Labelled(rid, tenant, ts, details, Verdict(None if correct is None else bool(correct), score, reference),
                     explored.get(rid, []))
            for rid, tenant, ts, details, correct, score, reference in found
        ]

    def _log_decision(self, action: str, policy: str, numbers: str) -> None:
        with self._transaction() as db:
            db.execute("INSERT INTO policy_decisions (ts, action, policy, numbers) VALUES (?, ?, ?, ?)",
                       (self._clock(), action, policy, numbers))

    def _close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None
