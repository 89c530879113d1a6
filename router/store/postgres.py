"""The store in PostgreSQL, shared by every router replica (psycopg 3, async, a connection pool).

A reservation is one statement that adds to the tenant's book for the day only if the sum stays
within the budget (the row lock makes check-and-hold atomic across every replica); finishing a
request settles its reservation and writes its ledger row in one statement. Versioned migrations are applied at start under an advisory
lock (replicas may start together); a database migrated by a newer router is refused. When the
database cannot be reached within the pool's timeout, calls raise
:class:`~tierlm.router.store.base.StoreUnavailable` instead of waiting: the router then
refuses requests rather than answer one it cannot ledger.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

import psycopg
from psycopg_pool import AsyncConnectionPool, PoolTimeout

from tierlm.router.store.base import (
    DAY_S,
    DuplicateRequest,
    Labelled,
    LedgerRow,
    LedgerSummary,
    NotYourRequest,
    Reservation,
    StoreUnavailable,
    UnknownRequest,
    Verdict,
    day_of,
    over_budget,
)

MIGRATIONS = (
    """
    CREATE TABLE ledger (
        request_id text PRIMARY KEY,
        ts double precision NOT NULL,          -- unix seconds when the request finished
        tenant text NOT NULL,
        tiers text NOT NULL,                   -- tiers called, in order, comma-separated
        accepted_tier text NOT NULL,           -- '' when no tier answered
        prompt_tokens integer NOT NULL,
        completion_tokens integer NOT NULL,
        cost double precision NOT NULL,
        latency_ms double precision NOT NULL,
        outcome text NOT NULL,                 -- 'OK' or the gRPC status name the client got
        router text NOT NULL                   -- the replica that wrote the row (host:pid)
    );
    CREATE INDEX ledger_tenant_ts ON ledger (tenant, ts);
    CREATE TABLE budget_books (
        tenant text NOT NULL,
        day integer NOT NULL,                  -- UTC days since the epoch
        spent double precision NOT NULL,
        held double precision NOT NULL,
        PRIMARY KEY (tenant, day)
    );
    CREATE TABLE reservations (
        request_id text PRIMARY KEY,
        tenant text NOT NULL,
        day integer NOT NULL,
        amount double precision NOT NULL,
        state text NOT NULL CHECK (state IN ('held', 'settled', 'expired')),
        lease_until double precision NOT NULL
    );
    CREATE INDEX reservations_held ON reservations (lease_until) WHERE state = 'held';
    """,
    # 2: learning from live traffic: what the router saw, feedback, exploration, policy decisions.
    """
    ALTER TABLE ledger ADD COLUMN details text;
    CREATE TABLE feedback (
        request_id text PRIMARY KEY,
        tenant text NOT NULL,
        ts double precision NOT NULL,
        correct boolean,
        score double precision,
        reference text
    );
    CREATE TABLE explored (
        request_id text NOT NULL,
        answer text NOT NULL
    );
    CREATE INDEX explored_request ON explored (request_id);
    CREATE TABLE policy_decisions (
        id bigserial PRIMARY KEY,
        ts double precision NOT NULL,
        action text NOT NULL,
        policy text NOT NULL,
        numbers text NOT NULL
    );
    """,
)

_MIGRATION_LOCK = 7_422_190_011  # any constant: replicas starting together migrate one at a time

# Each request's reservation and finish are single statements: a tenant's book row is locked for
# one statement's run, not across round trips, so replicas serving one busy tenant barely queue.

# A day's book starts from what the ledger already holds for it (cheap when the book exists).
_START_BOOK = """
INSERT INTO budget_books (tenant, day, spent, held)
SELECT %(tenant)s, %(day)s, COALESCE(sum(cost), 0), 0 FROM ledger
WHERE tenant = %(tenant)s AND ts >= %(start)s AND ts < %(end)s
  AND NOT EXISTS (SELECT 1 FROM budget_books WHERE tenant = %(tenant)s AND day = %(day)s)
ON CONFLICT DO NOTHING
"""

# Hold the amount if it fits, and record the reservation, atomically; no row back: over budget.
# A request id seen before fails the insert (and so the hold) with a unique violation.
_HOLD = """
WITH book AS (
    UPDATE budget_books SET held = held + %(amount)s
    WHERE tenant = %(tenant)s AND day = %(day)s AND spent + held + %(amount)s <= %(limit)s
    RETURNING 1
)
INSERT INTO reservations (request_id, tenant, day, amount, state, lease_until)
SELECT %(rid)s, %(tenant)s, %(day)s, %(amount)s, 'held', %(lease)s FROM book
RETURNING request_id
"""

_UPSERT_ROW = """
INSERT INTO ledger (request_id, ts, tenant, tiers, accepted_tier, prompt_tokens, completion_tokens, cost, latency_ms, outcome, router,
                    details)
VALUES (%(rid)s, %(ts)s, %(tenant)s, %(tiers)s, %(accepted)s, %(prompt)s, %(completion)s, %(cost)s, %(latency)s, %(outcome)s, %(router)s,
        %(details)s)
ON CONFLICT (request_id) DO UPDATE SET
    ts = excluded.ts, tenant = excluded.tenant, tiers = excluded.tiers, accepted_tier = excluded.accepted_tier,
    prompt_tokens = excluded.prompt_tokens, completion_tokens = excluded.completion_tokens, cost = excluded.cost,
    latency_ms = excluded.latency_ms, outcome = excluded.outcome, router = excluded.router, details = excluded.details
WHERE ledger.outcome <> 'OK'
"""

# Settle the reservation once (the state before is read under the row lock, without PostgreSQL
# 18's RETURNING old.*: managed databases lag), move its hold into spend, write the row.
_FINISH_SETTLING = """
WITH prior AS (
    SELECT state FROM reservations WHERE request_id = %(rid)s FOR UPDATE
), settled AS (
    UPDATE reservations SET state = 'settled' FROM prior
    WHERE request_id = %(rid)s AND prior.state <> 'settled'
    RETURNING prior.state
), book AS (
    UPDATE budget_books
    SET held = held - CASE WHEN (SELECT state FROM settled) = 'held' THEN %(amount)s ELSE 0 END, spent = spent + %(cost)s
    WHERE tenant = %(book_tenant)s AND day = %(day)s AND EXISTS (SELECT 1 FROM settled)
)
""" + _UPSERT_ROW

# A request without a reservation still counts toward the day's book, if the tenant has one.
_FINISH = """
WITH book AS (
    UPDATE budget_books SET spent = spent + %(cost)s WHERE tenant = %(book_tenant)s AND day = %(day)s
)
""" + _UPSERT_ROW

#: psycopg_pool retries a lost server with exponential backoff (1, 2, 4, 8 ... s): a router would
#: keep failing for up to that long after the database is back. Capping the chain at this many
#: seconds bounds the recovery time.
RECONNECT_TIMEOUT_S = 5.0


class PostgresStore:
    def __init__(self, pool: AsyncConnectionPool, clock: Callable[[], float] = time.time):
        self._pool = pool
        self._clock = clock

    @classmethod
    async def connect(cls, dsn: str, *, name: str = "tierlm-router", max_size: int = 8, timeout_s: float = 5.0,
                      clock: Callable[[], float] = time.time) -> PostgresStore:
        """Open a pool on ``dsn`` (libpq connection string or URL) and bring the schema up to date."""
        pool = AsyncConnectionPool(
            dsn, name=name, min_size=1, max_size=max_size, open=False, timeout=timeout_s, max_waiting=1024,
            reconnect_timeout=RECONNECT_TIMEOUT_S, max_idle=60.0,
            check=AsyncConnectionPool.check_connection,  # drop connections that died with a restarted server
            kwargs={
                "autocommit": True, "connect_timeout": 3, "application_name": name,
                "options": "-c statement_timeout=5000 -c lock_timeout=3000 -c idle_in_transaction_session_timeout=10000",
            },
        )
        try:
            await pool.open(wait=True, timeout=timeout_s)
        except PoolTimeout:
            await pool.close()
            raise StoreUnavailable(f"cannot reach PostgreSQL at {_redacted(dsn)} within {timeout_s:g} s") from None
        store = cls(pool, clock)
        try:
            await store._migrate()
        except BaseException:
            await pool.close()
            raise
        return store

    async def _migrate(self) -> None:
        async with self._pool.connection() as conn, conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock(%s)", (_MIGRATION_LOCK,))
            await conn.execute("CREATE TABLE IF NOT EXISTS tierlm_schema (version integer NOT NULL)")
            row = await (await conn.execute("SELECT max(version) FROM tierlm_schema")).fetchone()
            version = row[0] or 0
            if version > len(MIGRATIONS):
                raise RuntimeError(f"the database's tierlm schema is version {version}, newer than this router knows "
                                   f"({len(MIGRATIONS)}); run a newer tierlm")
            for number in range(version, len(MIGRATIONS)):
                await conn.execute(MIGRATIONS[number])
                await conn.execute("INSERT INTO tierlm_schema (version) VALUES (%s)", (number + 1,))

    # -- the Store interface ----------------------------------------------------------------

    async def reserve(self, request_id: str, tenant: str, amount: float, budget_per_day: float, lease_s: float) -> Reservation:
        now = self._clock()
        day = day_of(now)
        params = {"rid": request_id, "tenant": tenant, "day": day, "amount": amount, "limit": budget_per_day,
                  "lease": now + lease_s, "start": day * DAY_S, "end": (day + 1) * DAY_S}
        async with self._connection() as conn:
            await conn.execute(_START_BOOK, params)
            try:
                held = await (await conn.execute(_HOLD, params)).fetchone()
            except psycopg.errors.UniqueViolation:  # this request id has been seen: a retry
                return await self._retried(conn, params)
            if held is None:
                seen = await (await conn.execute("SELECT 1 FROM reservations WHERE request_id = %(rid)s", params)).fetchone()
                if seen is not None:  # a retry whose second hold would not fit: it needs none
                    return await self._retried(conn, params)
                spent, in_flight = await (await conn.execute(
                    "SELECT spent, held FROM budget_books WHERE tenant = %(tenant)s AND day = %(day)s", params
                )).fetchone()
                raise over_budget(tenant, budget_per_day, spent, in_flight, amount)
        return Reservation(request_id, tenant, day, amount)

    async def _retried(self, conn: psycopg.AsyncConnection, params: dict) -> Reservation:
        """A reservation for a request id that exists: refused if answered, taken over if held,
        held again (against the budget) if its lease ran out."""
        async with conn.transaction():
            state, day, amount = await (await conn.execute(
                "SELECT state, day, amount FROM reservations WHERE request_id = %(rid)s FOR UPDATE", params
            )).fetchone()
            if state == "settled":
                raise DuplicateRequest(f"request id {params['rid']!r} was already answered and billed; send a new id")
            if state == "held":
                await conn.execute("UPDATE reservations SET lease_until = %(lease)s WHERE request_id = %(rid)s", params)
                return Reservation(params["rid"], params["tenant"], day, amount)
            spent, held = await (await conn.execute(
                "SELECT spent, held FROM budget_books WHERE tenant = %(tenant)s AND day = %(day)s FOR UPDATE", params
            )).fetchone()
            if spent + held + params["amount"] > params["limit"]:
                raise over_budget(params["tenant"], params["limit"], spent, held, params["amount"])
            await conn.execute("UPDATE budget_books SET held = held + %(amount)s WHERE tenant = %(tenant)s AND day = %(day)s", params)
            await conn.execute(
                "UPDATE reservations SET day = %(day)s, amount = %(amount)s, state = 'held', lease_until = %(lease)s"
                " WHERE request_id = %(rid)s", params,
            )
        return Reservation(params["rid"], params["tenant"], params["day"], params["amount"])

    async def finish(self, row: LedgerRow, reservation: Reservation | None) -> None:
        params = {
            "rid": row.request_id, "ts": row.ts, "tenant": row.tenant, "tiers": ",".join(row.tiers),
            "accepted": row.accepted_tier, "prompt": row.prompt_tokens, "completion": row.completion_tokens,
            "cost": row.cost, "latency": row.latency_ms, "outcome": row.outcome, "router": row.router, "details": row.details,
            "day": reservation.day if reservation else day_of(row.ts), "amount": reservation.amount if reservation else 0.0,
            "book_tenant": reservation.tenant if reservation else row.tenant,
        }
        async with self._connection() as conn:
            await conn.execute(_FINISH_SETTLING if reservation is not None else _FINISH, params)

    async def release_expired(self) -> int:
        async with self._connection() as conn, conn.transaction():
            expired = await (await conn.execute(
                "UPDATE reservations SET state = 'expired' WHERE request_id IN ("
                " SELECT request_id FROM reservations WHERE state = 'held' AND lease_until < %s FOR UPDATE SKIP LOCKED)"
                " RETURNING tenant, day, amount",
                (self._clock(),),
            )).fetchall()
            for tenant, day, amount in expired:
                await conn.execute("UPDATE budget_books SET held = held - %s WHERE tenant = %s AND day = %s", (amount, tenant, day))
        return len(expired)

    async def summarize(self, tenant: str, since_unix_s: float = 0.0) -> LedgerSummary:
        async with self._connection() as conn:
            requests, ok, cost, prompt, completion = await (await conn.execute(
                "SELECT count(*), count(*) FILTER (WHERE outcome = 'OK'), COALESCE(sum(cost), 0),"
                " COALESCE(sum(prompt_tokens), 0), COALESCE(sum(completion_tokens), 0)"
                " FROM ledger WHERE tenant = %s AND ts >= %s",
                (tenant, since_unix_s),
            )).fetchone()
            by_tier = dict(await (await conn.execute(
                "SELECT accepted_tier, count(*) FROM ledger WHERE tenant = %s AND ts >= %s AND accepted_tier <> ''"
                " GROUP BY accepted_tier",
                (tenant, since_unix_s),
            )).fetchall())
        return LedgerSummary(tenant, int(requests), int(ok), float(cost), int(prompt), int(completion), by_tier)

    async def rows(self, since_unix_s: float = 0.0) -> list[LedgerRow]:
        async with self._connection() as conn:
            found = await (await conn.execute(
                "SELECT request_id, tenant, tiers, accepted_tier, prompt_tokens, completion_tokens, cost, latency_ms,"
                " outcome, ts, router, details FROM ledger WHERE ts >= %s ORDER BY ts, request_id",
                (since_unix_s,),
            )).fetchall()
        return [LedgerRow(r[0], r[1], r[2].split(",") if r[2] else [], *r[3:]) for r in found]

    async def give_feedback(self, request_id: str, tenant: str, verdict: Verdict) -> bool:
        async with self._connection() as conn:
            owner = await (await conn.execute("SELECT tenant FROM ledger WHERE request_id = %s", (request_id,))).fetchone()
            if owner is None:
                raise UnknownRequest(f"no request {request_id!r}")
            if owner[0] != tenant:
                raise NotYourRequest(f"request {request_id!r} is not tenant {tenant!r}'s")
            stored = await conn.execute(
                "INSERT INTO feedback (request_id, tenant, ts, correct, score, reference) VALUES (%s, %s, %s, %s, %s, %s)"
                " ON CONFLICT (request_id) DO NOTHING",
                (request_id, tenant, self._clock(), verdict.correct, verdict.score, verdict.reference),
            )
            return stored.rowcount == 1

    async def record_explored(self, request_id: str, answers: Sequence[str]) -> None:
        async with self._connection() as conn, conn.cursor() as cursor:
            await cursor.executemany("INSERT INTO explored (request_id, answer) VALUES (%s, %s)",
                                     [(request_id, answer) for answer in answers])

    async def labelled(self, since_unix_s: float = 0.0, request_id: str | None = None) -> list[Labelled]:
        # "%s IS NULL OR ..." keeps one statement for both uses; PostgreSQL plans the NULL case away.
        async with self._connection() as conn:
            found = await (await conn.execute(
                "SELECT l.request_id, l.tenant, l.ts, l.details, f.correct, f.score, f.reference FROM ledger AS l"
                " JOIN feedback AS f ON f.request_id = l.request_id WHERE l.ts >= %s AND l.details IS NOT NULL"
                " AND (%s::text IS NULL OR l.request_id = %s) ORDER BY l.ts",
                (since_unix_s, request_id, request_id),
            )).fetchall()
            explored: dict[str, list[str]] = {}
            for found_id, answer in await (await conn.execute(
                "SELECT e.request_id, e.answer FROM explored AS e JOIN ledger AS l ON l.request_id = e.request_id"
                " WHERE l.ts >= %s AND (%s::text IS NULL OR l.request_id = %s)", (since_unix_s, request_id, request_id),
            )).fetchall():
                explored.setdefault(found_id, []).append(answer)
        return [
            Labelled(rid, tenant, ts, details, Verdict(correct, score, reference), explored.get(rid, []))
            for rid, tenant, ts, details, correct, score, reference in found
        ]

    async def log_decision(self, action: str, policy: str, numbers: str) -> None:
        async with self._connection() as conn:
            await conn.execute("INSERT INTO policy_decisions (ts, action, policy, numbers) VALUES (%s, %s, %s, %s)",
                               (self._clock(), action, policy, numbers))

    async def close(self) -> None:
        await self._pool.close()

    def _connection(self):
        return _Unavailable(self._pool)


class _Unavailable:
    """A pooled connection whose failures to reach the database become StoreUnavailable."""

    def __init__(self, pool: AsyncConnectionPool):
        self._pool = pool
        self._context = None

    async def __aenter__(self) -> psycopg.AsyncConnection:
        self._context = self._pool.connection()
        try:
            return await self._context.__aenter__()
        except PoolTimeout:
            raise StoreUnavailable(f"PostgreSQL did not answer within {self._pool.timeout:g} s") from None

    async def __aexit__(self, kind, value, traceback) -> bool:
        try:
            await self._context.__aexit__(kind, value, traceback)
        except psycopg.OperationalError as exc:
            raise StoreUnavailable(f"PostgreSQL failed: {exc}") from None
        if isinstance(value, psycopg.OperationalError):
            raise StoreUnavailable(f"PostgreSQL failed: {value}") from value
        return False


def _redacted(dsn: str) -> str:
    """The DSN without its password, for messages."""
    try:
        info = psycopg.conninfo.conninfo_to_dict(dsn)
    except psycopg.ProgrammingError:
        return "<the configured DSN>"
    info.pop("password", None)
    return psycopg.conninfo.make_conninfo(**info)
