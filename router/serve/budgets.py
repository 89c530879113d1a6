"""Tenant budgets, enforced by reservation so concurrent requests can never overspend.

Before a request calls any tier, the router reserves its worst-case cost (every tier it may
call, with the full max_tokens and an upper bound on prompt tokens). The reservation is
checked against the day's budget together with what is spent and what other requests hold;
when the request ends, the reservation is replaced by the actual cost. Everything runs on
the router's single event loop without awaiting in between, which is what makes it atomic.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from tierlm.config import TenantConfig

_DAY_S = 86_400.0


class BudgetExceeded(Exception):
    """The request would take the tenant past a budget; the message names which."""


@dataclass
class Reservation:
    tenant: str
    day: int
    amount: float


class TenantBudgets:
    def __init__(
        self,
        tenants: Mapping[str, TenantConfig],
        spent_since: Callable[[str, float], float],
        clock: Callable[[], float] = time.time,
    ):
        self._tenants = dict(tenants)
        self._spent_since = spent_since
        self._clock = clock
        # (tenant, day) -> [settled spend, outstanding reservations]
        self._books: dict[tuple[str, int], list[float]] = {}

    def update_tenants(self, tenants: Mapping[str, TenantConfig]) -> None:
        """Take new limits from a reloaded policy; spend already booked stays."""
        self._tenants = dict(tenants)

    def per_query_limit(self, tenant: str) -> float | None:
        config = self._tenants.get(tenant)
        return config.budget_per_query if config else None

    def reserve(self, tenant: str, worst_case_cost: float) -> Reservation:
        day = int(self._clock() // _DAY_S)
        config = self._tenants.get(tenant)
        if config is None or config.budget_per_day is None:
            return Reservation(tenant, day, 0.0)
        book = self._book(tenant, day)
        if book[0] + book[1] + worst_case_cost > config.budget_per_day:
            raise BudgetExceeded(
                f"tenant {tenant!r} is over budget_per_day {config.budget_per_day:g}: spent {book[0]:.6g}, "
                f"{book[1]:.6g} held by requests in flight, this request may cost up to {worst_case_cost:.6g}"
            )
        book[1] += worst_case_cost
        return Reservation(tenant, day, worst_case_cost)

    def settle(self, reservation: Reservation, actual_cost: float) -> None:
        book = self._book(reservation.tenant, reservation.day)
        book[1] -= reservation.amount
        book[0] += actual_cost

    def _book(self, tenant: str, day: int) -> list[float]:
        book = self._books.get((tenant, day))
        if book is None:
            book = self._books[(tenant, day)] = [self._spent_since(tenant, day * _DAY_S), 0.0]
        return book
