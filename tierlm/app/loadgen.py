"""Many SDK calls at bounded concurrency, each one's outcome recorded: the demo's and the soak's sender.

One :func:`send_all` call sends every prompt through an :class:`~tierlm.client.AsyncClient`
with at most ``concurrency`` in flight and returns, in prompt order, what happened to each:
the :class:`~tierlm.client.Completion`, or the exception the call ended with, and the latency
the client saw. Nothing is raised for a failed call, so a caller can tell answered, failed
with a status, and lost apart (the soak's ledger check needs all three counted).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from tierlm.client import AsyncClient, Completion, TierlmError


@dataclass(frozen=True)
class Outcome:
    """One call: its completion or the exception it ended with, and the client-side latency."""

    completion: Completion | None
    error: Exception | None
    latency_ms: float

    @property
    def status(self) -> str | None:
        """The gRPC status name of a failed call (the exception's type for a non-gRPC failure)."""
        if self.error is None:
            return None
        if isinstance(self.error, TierlmError) and self.error.code is not None:
            return self.error.code.name
        return type(self.error).__name__


async def send_all(
    client: AsyncClient,
    prompts: Sequence[str],
    *,
    concurrency: int,
    request_ids: Sequence[str] | None = None,
    stop_at: float | None = None,
    on_done: Callable[[], None] | None = None,
    **params: Any,
) -> list[Outcome | None]:
    """``client.complete(prompt, **params)`` for every prompt, at most ``concurrency`` at once.

    ``request_ids``: one per prompt (the router's ledger key), else the SDK makes them.
    ``stop_at`` (a ``time.perf_counter()`` instant): calls that would start later are not
    sent, and their place holds None. ``on_done`` runs after each prompt (sent or not).
    """
    if request_ids is not None and len(request_ids) != len(prompts):
        raise ValueError(f"{len(request_ids)} request ids for {len(prompts)} prompts")
    gate = asyncio.Semaphore(concurrency)

    async def one(i: int) -> Outcome | None:
        async with gate:
            sent = time.perf_counter()
            if stop_at is not None and sent > stop_at:
                outcome = None
            else:
                ids = {} if request_ids is None else {"request_id": request_ids[i]}
                completion = error = None
                try:
                    completion = await client.complete(prompts[i], **ids, **params)
                except Exception as exc:  # recorded, not raised: the caller classifies failures
                    error = exc
                outcome = Outcome(completion, error, (time.perf_counter() - sent) * 1e3)
        if on_done is not None:
            on_done()
        return outcome

    return list(await asyncio.gather(*(one(i) for i in range(len(prompts)))))
