"""The drafter's side of speculative decoding: it drives the rounds.

Each round the drafter extends its own session by the tokens committed since the last round,
draws k draft tokens from its (small, compressed) model, and sends the verifier the context the
verifier has not seen plus the drafts. The verifier answers how many drafts its model accepts and
the token that follows them; those are committed, streamed, and the next round starts. k adapts
to the running acceptance rate and the measured cost of draft steps and verify calls
(:mod:`tierlm.edge.speculative.adaptive`).

The drafter keeps the whole committed context, so a verifier that lost the session (expired,
evicted, restarted) is sent it again from the position it says it holds; a verifier that cannot
be reached ends the generation with :class:`VerifierFailed`, which carries what the rounds so
far cost, and the router falls back as its policy says.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import torch

from tierlm.edge.errors import EngineError, InvalidRequest
from tierlm.edge.sampling import greedy_tokens
from tierlm.edge.prepare import RequestPreparer
from tierlm.edge.requests import Completion, FinishReason, GenerationRequest, TokenDelta
from tierlm.edge.speculative.acceptance import DRAFT_SUPPORT, SparseDistribution, draft_distribution, draw
from tierlm.edge.speculative.adaptive import DraftLength
from tierlm.edge.speculative.sessions import Draft, SessionEngine, SessionLost
from tierlm.edge.speculative.verifier import MAX_DRAFT_TOKENS, VerifyOutcome, VerifyRound
from tierlm.edge.text import TextAssembler

#: Times one round may be resent to a verifier that keeps losing the session.
MAX_RESENDS = 3


class VerifierClient(Protocol):
    """A verifier as the drafter calls it: over gRPC, or in-process."""

    async def verify(self, round_: VerifyRound) -> VerifyOutcome:
        """Raises ``SessionLost`` (resend from ``held``), ``InvalidRequest`` (the round is bad) and
        ``VerifierFailed`` (unreachable, overloaded, failed)."""


@dataclass
class SpeculationStats:
    """What a speculative generation did (tierlm.v1.SpeculativeStats)."""

    rounds: int = 0
    drafted_tokens: int = 0
    accepted_tokens: int = 0
    verifier_tokens: int = 0
    verifier_passes: int = 0
    session_rebuilds: int = 0
    verifier_model: str = ""
    final_k: int = 0

    @property
    def acceptance_rate(self) -> float:
        return self.accepted_tokens / self.drafted_tokens if self.drafted_tokens else 0.0


class VerifierFailed(EngineError):
    """The verifier could not be reached or failed a round; ``stats`` is the work done so far."""

    def __init__(self, message: str, stats: SpeculationStats | None = None) -> None:
        super().__init__(message)
        self.stats = stats or SpeculationStats()


@dataclass(frozen=True)
class SpeculativeCompletion(Completion):
    """A `Completion` with what the speculation did."""

    speculative: SpeculationStats = field(default_factory=SpeculationStats)


@dataclass(frozen=True)
class SpeculativeOptions:
    """Draft tokens per round to start with, and the most adaptation may reach; with
    ``adaptive`` off every round drafts the k it starts with."""

    k: int = 4
    max_k: int = 8
    adaptive: bool = True


class Drafter:
    """Generates with ``verifier``'s model, drafting on ``sessions`` (the drafter's model).

    Args:
        sessions: the drafter's model in a session engine (one session per generation).
        tokenizer: the drafter's tokenizer; the verifier's must be the same (the policy checks).
        verifier: where rounds are verified.
        defaults: k and max_k for requests that leave them at 0.
        eos_token_ids: tokens that end a generation (besides the tokenizer's own).
    """

    def __init__(
        self,
        sessions: SessionEngine,
        tokenizer,
        verifier: VerifierClient,
        defaults: SpeculativeOptions = SpeculativeOptions(),
        eos_token_ids: Sequence[int] = (),
    ) -> None:
        self.sessions = sessions
        self.tokenizer = tokenizer
        self.verifier = verifier
        self.defaults = defaults
        self._preparer = RequestPreparer(tokenizer, sessions.max_seq_len)
        self._eos = frozenset(eos_token_ids) | ({tokenizer.eos_token_id} if tokenizer.eos_token_id is not None else set())

    def stream(self, request: GenerationRequest, k: int = 0, max_k: int = 0) -> DraftStream:
        """Validate ``request`` (``InvalidRequest`` at once) and return its event stream:
        `TokenDelta`s as rounds commit them, then a `SpeculativeCompletion`."""
        prepared = self._preparer.prepare(request)
        if prepared.choice_ids is not None:
            raise InvalidRequest("choices are scored, not generated: send them without speculative options")
        max_k = max_k or max(self.defaults.max_k, k)
        k = k or min(self.defaults.k, max_k)
        if not 1 <= k <= max_k <= MAX_DRAFT_TOKENS:
            raise InvalidRequest(f"speculative k and max_k must satisfy 1 <= k <= max_k <= {MAX_DRAFT_TOKENS}, got k={k}, max_k={max_k}")
        run = _Generation(self, request, list(prepared.prompt_ids), prepared.stop, prepared.seed, DraftLength(k, max_k, adaptive=self.defaults.adaptive))
        return DraftStream(run.events())

    async def aclose(self) -> None:
        """Stop drafting: the session engine, and the verifier's channel if it has one."""
        await self.sessions.aclose()
        close = getattr(self.verifier, "close", None)
        if close is not None:
            await close()

    async def generate(self, request: GenerationRequest, k: int = 0, max_k: int = 0) -> SpeculativeCompletion:
        """Run ``request`` to completion (same errors as :meth:`stream`)."""
        events = self.stream(request, k, max_k)
        async for event in events:
            if isinstance(event, Completion):
                return event
        raise EngineError("the generation ended without a result")


class DraftStream:
    """An async iterator of one generation's events; `cancel()` stops it (an engine stream's shape)."""

    def __init__(self, events: AsyncIterator[TokenDelta | Completion]) -> None:
        self._events = events

    def __aiter__(self) -> DraftStream:
        return self

    async def __anext__(self) -> TokenDelta | Completion:
        return await self._events.__anext__()

    def cancel(self) -> None:
        if self._events.ag_running or self._events.ag_frame is None:
            return  # finished, or being advanced by a task whose cancellation stops it
        asyncio.get_running_loop().create_task(self._events.aclose())


class _Generation:
    """One speculative generation: its context, its two sessions and its rounds."""

    def __init__(
        self, drafter: Drafter, request: GenerationRequest, prompt: list[int], stop: tuple[str, ...], seed: int,
        length: DraftLength,
    ) -> None:
        self.drafter = drafter
        self.request = request
        self.prompt_len = len(prompt)
        self.context = prompt  # committed tokens: the prompt, then the output
        self.session = uuid.uuid4().hex
        self.drafted_upto = 0  # context tokens the drafter's session holds
        self.verified_upto = 0  # context tokens the verifier holds
        self.seed = seed
        self.generator = torch.Generator().manual_seed(seed) if request.temperature > 0 else None
        self.length = length
        self.stats = SpeculationStats(final_k=length.k)
        self.text = TextAssembler(drafter.tokenizer, prompt, stop)
        self.output: list[int] = []
        self.logprobs: list[float] | None = [] if request.logprobs else None

    async def events(self) -> AsyncIterator[TokenDelta | Completion]:
        started = time.perf_counter()
        first_token_at: float | None = None
        max_seq_len = self.drafter.sessions.max_seq_len
        reason: FinishReason | None = None
        while reason is None:
            remaining = self.request.max_tokens - len(self.output)
            room = max_seq_len - len(self.context)
            if room < 1:  # no room left for a draft after the context
                reason = FinishReason.LENGTH
                break
            # A round commits up to k + 1 tokens; drafting more than the output can take is waste.
            k = max(1, min(self.length.k, remaining - 1, room))
            tokens, logprobs = await self._round(k)
            for i, token in enumerate(tokens):
                if first_token_at is None:
                    first_token_at = time.perf_counter()
                delta, reason = self._commit(token, logprobs[i] if logprobs else None, max_seq_len)
                yield delta
                if reason is not None:
                    break
        self.stats.final_k = self.length.k
        now = time.perf_counter()
        yield SpeculativeCompletion(
            request_id=self.request.request_id,
            text=self.text.text,
            finish_reason=reason,
            prompt_tokens=self.prompt_len,
            completion_tokens=len(self.output),
            token_ids=tuple(self.output),
            token_logprobs=tuple(self.logprobs) if self.logprobs is not None else None,
            ttft_s=(first_token_at or now) - started,
            latency_s=now - started,
            speculative=self.stats,
        )

    def _commit(self, token: int, logprob: float | None, max_seq_len: int) -> tuple[TokenDelta, FinishReason | None]:
        """Take one verified token into the output; the finish reason if it ends the generation.
        The stopping rules are the edge engine's, so the output ends where the verifier's own would."""
        self.output.append(token)
        if self.logprobs is not None:
            self.logprobs.append(logprob)
        if token in self.drafter._eos and not self.request.ignore_eos:
            return TokenDelta(token, self.text.flush(), logprob), FinishReason.EOS
        delta = self.text.add(token)
        if self.text.stopped:
            return TokenDelta(token, delta, logprob), FinishReason.STOP
        # The engine stops once the tokens it has fed reach the context: all but the last.
        fed = self.prompt_len + len(self.output) - 1
        if len(self.output) >= self.request.max_tokens or fed >= max_seq_len:
            return TokenDelta(token, delta + self.text.flush(), logprob), FinishReason.LENGTH
        return TokenDelta(token, delta, logprob), None

    async def _round(self, k: int) -> tuple[list[int], tuple[float, ...] | None]:
        """Draft k tokens, have them verified; return the tokens the round commits."""
        draft_started = time.perf_counter()
        drafted = await self._draft(k)
        draft_s = time.perf_counter() - draft_started
        drafts = tuple(token for token, _ in drafted.value)
        distributions = tuple(q for _, q in drafted.value if q is not None)
        verify_started = time.perf_counter()
        outcome = await self._verify(drafts, distributions)
        verify_s = time.perf_counter() - verify_started
        stats = self.stats
        stats.rounds += 1
        stats.drafted_tokens += k
        stats.accepted_tokens += outcome.accepted
        self.length.observe(k, outcome.accepted, draft_s, verify_s)
        committed = [*drafts[: outcome.accepted], outcome.next_token]
        # The drafter's cache holds the old context and the drafts it fed (all but the last);
        # it stays valid up to the first rejected one.
        self.drafted_upto = len(self.context) + min(outcome.accepted, k - 1)
        self.context += committed
        self.verified_upto = outcome.length
        if outcome.model:
            stats.verifier_model = outcome.model
        return committed, outcome.logprobs

    async def _draft(self, k: int):
        for _ in range(MAX_RESENDS + 1):
            try:
                return await self.drafter.sessions.run(
                    self.session, self.drafted_upto, self.context[self.drafted_upto :], Draft(k, self._choose)
                )
            except SessionLost as lost:  # more generations than draft sessions: ours was evicted
                self.drafted_upto = min(lost.held, self.drafted_upto)
        raise EngineError(f"the drafter lost its session {MAX_RESENDS + 1} times in one round: too many concurrent generations")

    async def _verify(self, drafts: tuple[int, ...], distributions: tuple[SparseDistribution, ...]) -> VerifyOutcome:
        request = self.request
        for _ in range(MAX_RESENDS + 1):
            round_ = VerifyRound(
                session_id=self.session,
                start=self.verified_upto,
                tokens=tuple(self.context[self.verified_upto :]),
                drafts=drafts,
                temperature=request.temperature,
                top_p=request.top_p,
                draft_distributions=distributions,
                seed=self.seed,
                logprobs=request.logprobs,
            )
            try:
                outcome = await self.drafter.verifier.verify(round_)
            except SessionLost as lost:
                # The verifier lost (part of) the session: send the context again from what it holds.
                self.stats.session_rebuilds += 1
                self.verified_upto = min(lost.held, self.verified_upto)
                continue
            except VerifierFailed as failure:
                failure.stats = self.stats
                raise
            self.stats.verifier_tokens += outcome.processed_tokens
            self.stats.verifier_passes += outcome.forward_passes
            return outcome
        raise VerifierFailed(f"the verifier lost session {self.session} {MAX_RESENDS + 1} times in one round", self.stats)

    def _choose(self, logits: torch.Tensor) -> tuple[int, SparseDistribution | None]:
        """The drafter's pick for one position (on the session engine's thread)."""
        request = self.request
        if request.temperature == 0.0:
            return greedy_tokens(logits)[0], None
        q = draft_distribution(logits, request.temperature, request.top_p, DRAFT_SUPPORT)
        return draw(q, self.generator), q
