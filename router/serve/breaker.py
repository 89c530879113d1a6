"""Per-tier circuit breaker: stop calling a tier that keeps failing, probe it after a cool-down."""

from __future__ import annotations

import time
from collections.abc import Callable
from enum import Enum


class BreakerState(str, Enum):
    CLOSED = "closed"        # calls flow
    OPEN = "open"            # calls are skipped until the cool-down ends
    HALF_OPEN = "half_open"  # one probe call is in flight; its result decides


class CircuitBreaker:
    """Opens after `failures_to_open` consecutive failures; after `cooldown_s` lets one probe through.

    A successful probe closes the breaker; a failed one re-opens it for another cool-down; a
    probe that ends with no verdict (:meth:`release`) lets the next call probe.
    Single-threaded by design: the router calls it from its event loop only.
    """

    def __init__(self, failures_to_open: int, cooldown_s: float, clock: Callable[[], float] = time.monotonic):
        self.failures_to_open = failures_to_open
        self.cooldown_s = cooldown_s
        self._clock = clock
        self._failures = 0
        self._opened_at: float | None = None
        self._probing = False

    @property
    def state(self) -> BreakerState:
        if self._opened_at is None:
            return BreakerState.CLOSED
        if self._probing or self._clock() - self._opened_at >= self.cooldown_s:
            return BreakerState.HALF_OPEN
        return BreakerState.OPEN

    def allow(self) -> bool:
        """Whether to call the tier now; a True in the half-open state claims the single probe."""
        state = self.state
        if state is BreakerState.CLOSED:
            return True
        if state is BreakerState.HALF_OPEN and not self._probing:
            self._probing = True
            return True
        return False

    def record_success(self) -> None:
        self._failures = 0
        self._opened_at = None
        self._probing = False

    def release(self) -> None:
        """End a call that says nothing about the tier's health (the client cancelled, its own
        deadline ran out, the request was bad): a claimed probe is handed back, so the next
        call probes instead of the breaker staying half-open for good."""
        self._probing = False

    def record_failure(self) -> None:
        self._failures += 1
        if self._probing or self._failures >= self.failures_to_open:
            self._opened_at = self._clock()
        self._probing = False
