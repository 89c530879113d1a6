"""The verifier's side of speculative decoding: one round is one forward pass over the drafts.

A round appends the session's new context tokens and the k drafts to its cached context, gets
the verifier's logits at the k+1 draft positions from that one pass, and decides which drafts
its own model accepts (:mod:`tierlm.edge.speculative.acceptance`). The session keeps the
accepted tokens; the rejected drafts' cache entries are dropped. Rounds of different sessions
that arrive together run in one batched pass (:class:`~tierlm.edge.speculative.sessions.SessionEngine`).
"""

from __future__ import annotations

import math
import secrets
from collections.abc import Hashable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import torch
from torch import Tensor

from tierlm.edge.errors import EngineError, InvalidRequest
from tierlm.edge.prepare import MAX_SEED, MAX_TEMPERATURE
from tierlm.edge.speculative.acceptance import (
    MAX_SUPPORT, SparseDistribution, accept_greedy, accept_sampled, round_generator,
)
from tierlm.edge.speculative.sessions import Score, SessionEngine, SessionLost

#: The most drafts one round may carry.
MAX_DRAFT_TOKENS = 16


@dataclass(frozen=True)
class VerifyRound:
    """One round a drafter asks a verifier for (the fields of tierlm.v1.VerifyRequest)."""

    session_id: str
    start: int
    tokens: tuple[int, ...]
    drafts: tuple[int, ...]
    temperature: float = 0.0
    top_p: float = 1.0
    draft_distributions: tuple[SparseDistribution, ...] = ()
    seed: int | None = None
    logprobs: bool = False
    tenant: str = ""


@dataclass(frozen=True)
class VerifyOutcome:
    """The verifier's answer (the fields of tierlm.v1.VerifyResponse)."""

    accepted: int
    next_token: int
    length: int  # tokens the verifier holds for the session now
    processed_tokens: int
    forward_passes: int
    logprobs: tuple[float, ...] | None = None
    model: str = ""  # the verifier's model, as it names itself


class VerifyUnsupported(EngineError):
    """This verifier cannot verify rounds of this kind (UNIMPLEMENTED); the message says why."""


class Verifier(Protocol):
    """What serves Verify: the torch verifier here, vLLM's in the cloud tier."""

    async def verify(self, round_: VerifyRound) -> VerifyOutcome:
        """Raises ``InvalidRequest`` for a bad round, ``SessionLost`` for a session it does not hold
        (as far as ``round_.start``), ``VerifyUnsupported`` and the engine errors."""

    async def aclose(self) -> None: ...


def check_round(round_: VerifyRound, vocab_size: int, max_draft: int = MAX_DRAFT_TOKENS) -> None:
    """Refuse a round that cannot be verified as sent, saying what to change (``InvalidRequest``)."""
    if not round_.session_id or len(round_.session_id) > 128:
        raise InvalidRequest("session_id must be 1 to 128 characters (a random id per generation)")
    if not round_.tokens:
        raise InvalidRequest("tokens is empty: every round brings the context tokens the verifier has not seen (at least the last next_token)")
    if not 1 <= len(round_.drafts) <= max_draft:
        raise InvalidRequest(f"a round carries 1 to {max_draft} draft tokens, got {len(round_.drafts)}")
    for name, ids in (("tokens", round_.tokens), ("draft_tokens", round_.drafts)):
        bad = next((t for t in ids if not 0 <= t < vocab_size), None)
        if bad is not None:
            raise InvalidRequest(f"{name} holds token id {bad}, outside the verifier's vocabulary 0..{vocab_size - 1}")
    if not (math.isfinite(round_.temperature) and 0.0 <= round_.temperature <= MAX_TEMPERATURE):
        raise InvalidRequest(f"temperature must be between 0 (greedy) and {MAX_TEMPERATURE}, got {round_.temperature}")
    if not (math.isfinite(round_.top_p) and 0.0 < round_.top_p <= 1.0):
        raise InvalidRequest(f"top_p must be in (0, 1], got {round_.top_p}")
    if round_.seed is not None and not 0 <= round_.seed <= MAX_SEED:
        raise InvalidRequest(f"seed must be in [0, 2**63 - 1], got {round_.seed}")
    if round_.temperature == 0.0:
        if round_.draft_distributions:
            raise InvalidRequest("draft_distributions are for sampled rounds (temperature > 0); greedy rounds send none")
        return
    if len(round_.draft_distributions) != len(round_.drafts):
        raise InvalidRequest(
            f"a sampled round sends the distribution each draft was drawn from: {len(round_.drafts)} drafts, "
            f"{len(round_.draft_distributions)} draft_distributions"
        )
    for i, (draft, q) in enumerate(zip(round_.drafts, round_.draft_distributions)):
        _check_distribution(i, draft, q, vocab_size)


def _check_distribution(index: int, draft: int, q: SparseDistribution, vocab_size: int) -> None:
    where = f"draft_distributions[{index}]"
    n = len(q.token_ids)
    if not 1 <= n <= MAX_SUPPORT or len(q.probs) != n:
        raise InvalidRequest(f"{where} needs 1 to {MAX_SUPPORT} token_ids and as many probs")
    if bool(((q.token_ids < 0) | (q.token_ids >= vocab_size)).any()):
        raise InvalidRequest(f"{where} holds token ids outside the vocabulary 0..{vocab_size - 1}")
    if len(torch.unique(q.token_ids)) != n:
        raise InvalidRequest(f"{where} lists a token id twice")
    if not bool(torch.isfinite(q.probs).all()) or bool((q.probs < 0).any()) or abs(float(q.probs.sum()) - 1.0) > 1e-3:
        raise InvalidRequest(f"{where}: probs must be finite, >= 0 and sum to 1")
    if q.prob_of(draft) <= 0.0:
        raise InvalidRequest(f"draft token {draft} has probability 0 in {where}, the distribution it was drawn from")


class SessionVerifier:
    """Verifies rounds on a :class:`SessionEngine` over the verifier's model."""

    def __init__(self, sessions: SessionEngine, model_name: str = "", max_draft: int = MAX_DRAFT_TOKENS) -> None:
        self.sessions = sessions
        self.model_name = model_name
        self.max_draft = max_draft

    @classmethod
    def from_pretrained(cls, path: str | Path, *, max_draft: int = MAX_DRAFT_TOKENS, **session_options) -> SessionVerifier:
        """The verifier of a model folder; ``session_options`` go to :class:`SessionEngine`."""
        return cls(SessionEngine.from_pretrained(path, **session_options), Path(path).name, max_draft)

    async def verify(self, round_: VerifyRound) -> VerifyOutcome:
        check_round(round_, self.sessions.vocab_size, self.max_draft)
        k = len(round_.drafts)
        fed = list(round_.tokens) + list(round_.drafts)
        first_draft_at = round_.start + len(round_.tokens)
        seed = secrets.randbelow(MAX_SEED) if round_.seed is None else round_.seed

        def decide(logits: Tensor) -> tuple[tuple[int, int, tuple[float, ...] | None], int]:
            if round_.temperature == 0.0:
                accepted, token = accept_greedy(logits, round_.drafts)
            else:
                accepted, token = accept_sampled(
                    logits, round_.drafts, round_.draft_distributions, round_.temperature, round_.top_p,
                    round_generator(seed, first_draft_at),
                )
            logprobs = None
            if round_.logprobs:
                chosen = torch.tensor([*round_.drafts[:accepted], token])
                logprobs = tuple(torch.log_softmax(logits[: accepted + 1], dim=-1).gather(-1, chosen[:, None])[:, 0].tolist())
            # The session keeps the new context and the accepted drafts; the next token is
            # not in the cache yet: it arrives as the next round's first token.
            return (accepted, token, logprobs), len(round_.tokens) + accepted

        key: Hashable = (round_.tenant, round_.session_id)
        try:
            result = await self.sessions.run(key, round_.start, fed, Score(k + 1, decide))
        except SessionLost as lost:
            raise SessionLost(f"session {round_.session_id!r} starts at {round_.start}, but {lost}", lost.held) from None
        accepted, token, logprobs = result.value
        return VerifyOutcome(accepted, token, result.length, len(fed), result.forward_passes, logprobs, self.model_name)

    async def aclose(self) -> None:
        await self.sessions.aclose()
