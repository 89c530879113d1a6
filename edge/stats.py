"""What the engine reports to its host: live gauges and counters, and per-event hooks."""

from __future__ import annotations

from dataclasses import dataclass, field

from tierlm.edge.requests import Completion


class EngineObserver:
    """Hooks for a server's metrics (e.g. Prometheus histograms); every method is a no-op here.

    Called from the engine's decode thread (`on_reject` from the submitting thread), so
    overrides must be quick and thread-safe.
    """

    def on_reject(self) -> None:
        """A request was refused because the queue was full."""

    def on_first_token(self, ttft_s: float) -> None:
        """A request produced its first token (or its scores), `ttft_s` after submission."""

    def on_token(self, inter_token_s: float) -> None:
        """A request produced another token, `inter_token_s` after its previous one."""

    def on_finish(self, completion: Completion) -> None:
        """A request ended (finish reason, token counts and latency are in `completion`)."""


@dataclass(frozen=True)
class EngineStats:
    """A snapshot of the engine's load and totals since start."""

    running: int
    waiting: int
    max_batch: int
    max_queue: int
    requests_finished: dict[str, int] = field(default_factory=dict)  # by finish reason
    requests_failed: int = 0
    requests_rejected: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    decode_steps: int = 0
    prefill_chunks: int = 0  # prefill forward calls; one may feed several requests' chunks


@dataclass(frozen=True)
class EngineHealth:
    """Whether the engine can take requests, and why not when it cannot."""

    ok: bool
    detail: str
