"""The router's store on both backends: SQLite and a real PostgreSQL (no server needed for either).

Reservations, settlement once, ledger rows once per request id, leases, idempotent retries,
budgets per UTC day, migrations; and on PostgreSQL, three stores (as three replicas would)
reserving one tenant's budget at once.
"""

from __future__ import annotations

import asyncio
import sqlite3

import pytest

from tierlm.router.store import BudgetExceeded, DuplicateRequest, LedgerRow, StoreUnavailable, open_store
from tierlm.router.store.postgres import PostgresStore
from tierlm.router.store.sqlite import SqliteStore

DAY = 86_400.0


class Clock:
    def __init__(self, now: float = 100 * DAY + 3600):
        self.now = now

    def __call__(self) -> float:
        return self.now


def row(request_id: str, cost: float, outcome: str = "OK", tenant: str = "acme", ts: float = 100 * DAY + 3600) -> LedgerRow:
    return LedgerRow(request_id, tenant, ["edge"], "edge" if outcome == "OK" else "", 5, 1, cost, 1.0, outcome, ts)


@pytest.fixture(params=["sqlite", "postgres"])
def make_store(request, tmp_path):
    """``await make_store(clock)``: a new store of each kind (:func:`run` closes it)."""
    dsn = request.getfixturevalue("postgres_dsn") if request.param == "postgres" else None

    async def make(clock: Clock):
        if dsn is None:
            return SqliteStore(tmp_path / "ledger.sqlite", clock=clock)
        return await PostgresStore.connect(dsn, clock=clock)

    return make


def run(make_store, body, clock: Clock | None = None):
    """Run ``body(store, clock)`` on a fresh store in one event loop, closing the store after."""
    clock = clock or Clock()

    async def go():
        store = await make_store(clock)
        try:
            return await body(store, clock)
        finally:
            await store.close()

    return asyncio.run(go())


def test_a_reservation_holds_until_finished_at_the_actual_cost(make_store):
    async def body(store, clock):
        first = await store.reserve("r1", "acme", 0.5, 1.0, lease_s=60)
        with pytest.raises(BudgetExceeded, match=r"over budget_per_day 1: spent 0, 0.5 held by requests in flight"):
            await store.reserve("r2", "acme", 0.6, 1.0, lease_s=60)
        await store.finish(row("r1", 0.1), first)  # it cost less than its worst case
        await store.reserve("r2", "acme", 0.85, 1.0, lease_s=60)  # 0.1 spent + 0.85 held <= 1
        with pytest.raises(BudgetExceeded):
            await store.reserve("r3", "acme", 0.1, 1.0, lease_s=60)
        await store.reserve("other", "globex", 0.9, 1.0, lease_s=60)  # another tenant's own budget
        summary = await store.summarize("acme")
        assert (summary.requests, summary.ok, summary.cost, summary.by_tier) == (1, 1, 0.1, {"edge": 1})

    run(make_store, body)


def test_budgets_are_per_utc_day_and_start_from_the_ledger(make_store):
    async def body(store, clock):
        await store.finish(row("earlier", 0.9, ts=clock.now - 60), None)  # spent today before any reservation
        with pytest.raises(BudgetExceeded, match="spent 0.9"):
            await store.reserve("r1", "acme", 0.2, 1.0, lease_s=60)
        clock.now += DAY  # a new UTC day
        await store.reserve("r1", "acme", 0.2, 1.0, lease_s=60)

    run(make_store, body)


def test_one_row_per_request_id_and_settled_once(make_store):
    async def body(store, clock):
        refused = row("r1", 0.0, outcome="RESOURCE_EXHAUSTED")
        await store.finish(refused, None)
        held = await store.reserve("r1", "acme", 0.4, 1.0, lease_s=60)  # the client retried with the same id
        await store.finish(row("r1", 0.3), held)
        await store.finish(row("r1", 0.3), held)  # a second finish (another replica) changes nothing
        await store.finish(row("r1", 0.0, outcome="CANCELLED"), None)  # nor does a late refusal
        rows = await store.rows()
        assert [(r.request_id, r.outcome, r.cost) for r in rows] == [("r1", "OK", 0.3)]
        with pytest.raises(DuplicateRequest, match="already answered"):
            await store.reserve("r1", "acme", 0.1, 1.0, lease_s=60)
        await store.reserve("r2", "acme", 0.7, 1.0, lease_s=60)  # 0.3 spent (once) + 0.7 held = 1.0

    run(make_store, body)


def test_a_held_request_retried_is_taken_over_not_held_twice(make_store):
    async def body(store, clock):
        await store.reserve("r1", "acme", 0.6, 1.0, lease_s=60)
        again = await store.reserve("r1", "acme", 0.6, 1.0, lease_s=60)  # its router died; the SDK retried
        assert again.amount == 0.6
        await store.reserve("r2", "acme", 0.4, 1.0, lease_s=60)  # only 0.6 is held, not 1.2

    run(make_store, body)


def test_an_expired_lease_releases_its_hold_and_a_late_finish_still_books(make_store):
    async def body(store, clock):
        orphan = await store.reserve("orphan", "acme", 0.8, 1.0, lease_s=30)
        with pytest.raises(BudgetExceeded):
            await store.reserve("r2", "acme", 0.3, 1.0, lease_s=30)
        assert await store.release_expired() == 0  # the lease still runs
        clock.now += 31
        assert await store.release_expired() == 1
        await store.reserve("r2", "acme", 0.3, 1.0, lease_s=30)
        await store.finish(row("orphan", 0.05), orphan)  # its router came back after all: spent counts once
        with pytest.raises(BudgetExceeded, match="spent 0.05, 0.3 held"):
            await store.reserve("r3", "acme", 0.7, 1.0, lease_s=30)

    run(make_store, body)


def test_a_store_written_by_a_newer_router_is_refused(tmp_path, postgres_dsn):
    with sqlite3.connect(tmp_path / "future.sqlite") as db:
        db.execute("PRAGMA user_version = 99")
    with pytest.raises(RuntimeError, match="schema version 99 is newer"):
        SqliteStore(tmp_path / "future.sqlite")

    async def postgres():
        store = await PostgresStore.connect(postgres_dsn)
        await store.close()
        import psycopg

        async with await psycopg.AsyncConnection.connect(postgres_dsn, autocommit=True) as conn:
            await conn.execute("INSERT INTO tierlm_schema (version) VALUES (99)")
        with pytest.raises(RuntimeError, match="version 99, newer"):
            await PostgresStore.connect(postgres_dsn)

    asyncio.run(postgres())


def test_an_old_sqlite_ledger_is_migrated_keeping_one_row_per_request(tmp_path):
    path = tmp_path / "old.sqlite"
    with sqlite3.connect(path) as db:
        db.executescript(
            "CREATE TABLE requests (id INTEGER PRIMARY KEY AUTOINCREMENT, request_id TEXT NOT NULL, ts REAL NOT NULL,"
            " tenant TEXT NOT NULL, tiers TEXT NOT NULL, accepted_tier TEXT NOT NULL, prompt_tokens INTEGER NOT NULL,"
            " completion_tokens INTEGER NOT NULL, cost REAL NOT NULL, latency_ms REAL NOT NULL, outcome TEXT NOT NULL);"
        )
        for cost in (0.1, 0.2):  # an old ledger could hold the same id twice
            db.execute("INSERT INTO requests VALUES (NULL, 'x', 1.0, 'acme', 'edge', 'edge', 1, 1, ?, 1.0, 'OK')", (cost,))

    async def body():
        store = SqliteStore(path)
        try:
            assert [(r.request_id, r.cost) for r in await store.rows()] == [("x", 0.2)]
        finally:
            await store.close()

    asyncio.run(body())


def test_replicas_sharing_postgres_never_overspend(postgres_dsn):
    """Three stores (three routers' pools) reserve, finish and sweep one tenant's budget at once."""

    async def body():
        stores = [await PostgresStore.connect(postgres_dsn, name=f"router-{i}") for i in range(3)]
        budget, granted = 1.0, []

        async def request(i: int) -> None:
            store = stores[i % 3]
            try:
                held = await store.reserve(f"r{i}", "acme", 0.03, budget, lease_s=60)
            except BudgetExceeded:
                await store.finish(row(f"r{i}", 0.0, outcome="RESOURCE_EXHAUSTED"), None)
                return
            granted.append(i)
            await asyncio.sleep(0.01)
            await store.finish(row(f"r{i}", 0.025), held)

        try:
            await asyncio.gather(*(request(i) for i in range(64)))
            rows = await stores[0].rows()
        finally:
            for store in stores:
                await store.close()
        spent = sum(r.cost for r in rows)
        assert len(rows) == 64 and len({r.request_id for r in rows}) == 64
        assert 0 < len(granted) < 64 and spent <= budget + 1e-12
        assert sum(r.outcome == "OK" for r in rows) == len(granted)

    asyncio.run(body())


def test_postgres_down_is_unavailable_then_recovers(postgres_server, postgres_dsn):
    async def body():
        store = await PostgresStore.connect(postgres_dsn, timeout_s=2.0)
        try:
            await store.finish(row("before", 0.1), None)
            postgres_server.stop()
            with pytest.raises(StoreUnavailable):
                await asyncio.wait_for(store.finish(row("during", 0.1), None), timeout=15)
            postgres_server.start()
            for _ in range(40):  # the pool reconnects without being recreated
                try:
                    await store.finish(row("after", 0.1), None)
                    break
                except StoreUnavailable:
                    await asyncio.sleep(0.25)
            assert sorted(r.request_id for r in await store.rows()) == ["after", "before"]
        finally:
            await store.close()

    asyncio.run(body())


def test_open_store_picks_the_backend_by_location(tmp_path, postgres_dsn):
    async def body():
        for location, kind in ((tmp_path / "l.sqlite", SqliteStore), (postgres_dsn, PostgresStore)):
            store = await open_store(location)
            assert isinstance(store, kind)
            await store.close()

    asyncio.run(body())


def test_feedback_is_kept_once_for_the_requests_own_tenant(make_store):
    from tierlm.router.store import NotYourRequest, UnknownRequest, Verdict

    async def body(store, clock):
        details = '{"query": "q", "answers": []}'
        await store.finish(LedgerRow("r1", "acme", ["edge"], "edge", 1, 1, 0.1, 1.0, "OK", clock.now, details=details), None)
        await store.finish(row("r2", 0.1), None)  # recorded without details: nothing to learn from
        assert await store.give_feedback("r1", "acme", Verdict(correct=True))
        assert not await store.give_feedback("r1", "acme", Verdict(correct=False))  # the first verdict stands
        assert await store.give_feedback("r2", "acme", Verdict(reference="up"))
        with pytest.raises(NotYourRequest):
            await store.give_feedback("r1", "globex", Verdict(correct=False))
        with pytest.raises(UnknownRequest):
            await store.give_feedback("nope", "acme", Verdict(correct=True))
        await store.record_explored("r1", ['{"tier": "cloud", "text": "up"}'])
        await store.log_decision("promoted", "abc123", '{"accuracy": 0.8}')
        (labelled,) = await store.labelled()
        assert (labelled.request_id, labelled.details, labelled.verdict, labelled.explored) == (
            "r1", details, Verdict(correct=True), ['{"tier": "cloud", "text": "up"}'])

    run(make_store, body)
