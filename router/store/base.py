"""The router's shared state: the ledger (one row per request) and tenants' daily budgets.

Two implementations behind one interface: SQLite for one machine (the embedded default: one
router, or router workers sharing one file) and PostgreSQL for routers on several machines.
Budgets are enforced by reservation: before calling any tier the router reserves the request's
worst-case cost under the tenant's budget for the day, atomically in the database, and when the
request ends it *finishes* it: the reservation is settled at the actual cost and the ledger row
written, together, exactly once. A reservation carries a lease: if the router that took it dies,
the lease runs out and any router's sweep releases the hold. Request ids make retries idempotent:
a request id already answered is refused; one still held (its router died mid-request) is taken
over, never held twice.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

DAY_S = 86_400.0


def day_of(unix_s: float) -> int:
    """The UTC day a time falls on (days since the epoch): budgets are per tenant and UTC day."""
    return int(unix_s // DAY_S)


@dataclass(frozen=True)
class LedgerRow:
    request_id: str
    tenant: str
    tiers: Sequence[str]
    accepted_tier: str
    prompt_tokens: int
    completion_tokens: int
    cost: float
    latency_ms: float
    outcome: str
    ts: float = field(default_factory=time.time)
    router: str = ""  # the replica that wrote the row (host:pid)
    # What the router saw, as JSON, when the policy records for learning: the query, each
    # tier's answer with its signals and score, the policy's version (see router/serve/learning.py).
    details: str | None = None


@dataclass(frozen=True)
class Verdict:
    """A caller's feedback on an answer: exactly one of the three is set."""

    correct: bool | None = None
    score: float | None = None
    reference: str | None = None


@dataclass(frozen=True)
class Labelled:
    """A request the router recorded and a caller judged: what refits and live metrics learn from."""

    request_id: str
    tenant: str
    ts: float
    details: str
    verdict: Verdict
    explored: list[str]  # JSON of each answer an exploration call added, one per tier


@dataclass(frozen=True)
class LedgerSummary:
    tenant: str
    requests: int
    ok: int
    cost: float
    prompt_tokens: int
    completion_tokens: int
    by_tier: dict[str, int]


@dataclass(frozen=True)
class Reservation:
    request_id: str
    tenant: str
    day: int
    amount: float


class BudgetExceeded(Exception):
    """The request would take the tenant past its daily budget; the message says by how much."""


class DuplicateRequest(Exception):
    """A request id that was already answered and billed: a retry must not be charged twice."""


class StoreUnavailable(Exception):
    """The store cannot be reached now; the request is refused rather than left unledgered."""


class UnknownRequest(Exception):
    """No ledger row has this request id."""


class NotYourRequest(Exception):
    """The request belongs to another tenant."""


class Store(Protocol):
    async def reserve(
        self, request_id: str, tenant: str, amount: float, budget_per_day: float, lease_s: float
    ) -> Reservation:
        """Hold ``amount`` of ``tenant``'s budget for today until the request finishes (or the
        lease of ``lease_s`` seconds runs out). Raises :class:`BudgetExceeded`,
        :class:`DuplicateRequest` or :class:`StoreUnavailable`."""

    async def finish(self, row: LedgerRow, reservation: Reservation | None) -> None:
        """Settle ``reservation`` at ``row.cost`` (once, whatever happens later) and write the
        request's ledger row, in one transaction. A request id's row is written once; a later
        finish of the same id replaces a refusal, never an answer."""

    async def release_expired(self) -> int:
        """Release the holds of reservations whose lease ran out; returns how many."""

    async def summarize(self, tenant: str, since_unix_s: float = 0.0) -> LedgerSummary: ...

    async def give_feedback(self, request_id: str, tenant: str, verdict: Verdict) -> bool:
        """Keep ``tenant``'s verdict on its request; False if the request already had one (the
        first stands). Raises :class:`UnknownRequest` or :class:`NotYourRequest`."""

    async def record_explored(self, request_id: str, answers: Sequence[str]) -> None:
        """Add answers (JSON, one per tier) that exploration got for a request after it was answered."""

    async def labelled(self, since_unix_s: float = 0.0, request_id: str | None = None) -> list[Labelled]:
        """Every recorded request with feedback since a time (or only ``request_id``), oldest first."""

    async def log_decision(self, action: str, policy: str, numbers: str) -> None:
        """Keep a policy decision (a refit promoted or rejected, a rollback) and its numbers (JSON)."""

    async def rows(self, since_unix_s: float = 0.0) -> list[LedgerRow]:
        """Every ledger row since a time, oldest first (audits, tests)."""

    async def close(self) -> None: ...


def over_budget(tenant: str, limit: float, spent: float, held: float, amount: float) -> BudgetExceeded:
    return BudgetExceeded(
        f"tenant {tenant!r} is over budget_per_day {limit:g}: spent {spent:.6g}, {held:.6g} held by requests "
        f"in flight, this request may cost up to {amount:.6g}"
    )
