"""The router's ledger and budgets: SQLite on one machine, PostgreSQL for replicas (see base.py)."""

from __future__ import annotations

from pathlib import Path

from tierlm.router.store.base import (
    BudgetExceeded,
    DuplicateRequest,
    Labelled,
    LedgerRow,
    LedgerSummary,
    NotYourRequest,
    Reservation,
    Store,
    StoreUnavailable,
    UnknownRequest,
    Verdict,
)


def is_postgres(location: str) -> bool:
    """Whether a store location names PostgreSQL (a URL or a libpq connection string)."""
    return location.startswith(("postgresql://", "postgres://")) or "=" in location


async def open_store(location: str | Path) -> Store:
    """The store at ``location``: a PostgreSQL URL (``postgresql://...``) or libpq connection string
    (``host=... dbname=...``), else the path of a SQLite file (created if missing)."""
    if is_postgres(str(location)):
        from tierlm.router.store.postgres import PostgresStore  # psycopg only where PostgreSQL is used

        return await PostgresStore.connect(str(location))
    from tierlm.router.store.sqlite import SqliteStore

    return SqliteStore(Path(location))


__all__ = [
    "BudgetExceeded",
    "DuplicateRequest",
    "Labelled",
    "LedgerRow",
    "LedgerSummary",
    "NotYourRequest",
    "Reservation",
    "Store",
    "StoreUnavailable",
    "UnknownRequest",
    "Verdict",
    "is_postgres",
    "open_store",
]
