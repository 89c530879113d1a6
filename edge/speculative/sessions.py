"""Sessions that keep their KV cache between calls: the engine drafters and verifiers run on.

Speculative decoding works in rounds on a growing context. The drafter extends its session by
the tokens committed since its last round and drafts k more; the verifier extends its session by
the same committed tokens plus the drafts and scores them all in one pass. Between rounds each
session keeps its keys and values in one slot of the decoder's cache, so a round computes only
what is new.

One thread owns the model (as in :class:`~tierlm.edge.engine.DecoderEngine`). Each iteration it
takes every session that has work, runs the short pieces (a round's few tokens, one draft step)
together in one forward pass, right-padded to the longest, and feeds one chunk of the oldest
long piece (a prompt). Padding is safe: a padded position is past the row's context, so no real
query attends to it, and the next call of that session overwrites it.

Slots are bounded (``max_sessions``). A session idle for longer than ``ttl_s`` is dropped, and
when every slot is taken the least recently used idle session is evicted. A call whose session
is gone (or shorter than the call's ``start``) fails with :class:`SessionLost` saying how many
tokens the engine holds, so the caller resends from there: nothing is answered from a cache
that does not hold the caller's context.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic, TypeVar

import torch
from torch import Tensor

from tierlm.edge.decoder import OutputSubset, Transformer, load_model
from tierlm.edge.errors import EngineClosed, EngineError, InvalidRequest, QueueFull
from tierlm.edge.threads import prepare as prepare_threads
from tierlm.edge.threads import torch_threads

R = TypeVar("R")

#: Pieces of at most this many tokens share the padded batch; longer ones are fed in chunks.
SHORT_PIECE = 32


class SessionLost(EngineError):
    """The engine holds fewer of the session's tokens than the call assumed (``held``, 0 when the
    session is unknown, expired or evicted): resend the context from position ``held``."""

    def __init__(self, message: str, held: int) -> None:
        super().__init__(message)
        self.held = held


@dataclass(frozen=True)
class Score(Generic[R]):
    """Feed the tokens, then hand the logits of the last ``rows`` positions ([rows, V], float32)
    to ``then`` on the engine thread; ``then`` returns the result and how many of the fed
    tokens the session keeps (the rest, e.g. rejected drafts, are dropped)."""

    rows: int
    then: Callable[[Tensor], tuple[R, int]]


@dataclass(frozen=True)
class Draft(Generic[R]):
    """Feed the tokens, then draw ``k`` tokens one at a time: ``choose`` gets the next-token
    logits ([V], float32) and returns the token and whatever the caller wants with it (its
    distribution). Each drawn token but the last is fed to draw the next; the result is the
    list of ``choose``'s answers, and the session keeps everything fed."""

    k: int
    choose: Callable[[Tensor], tuple[int, R]]


@dataclass(frozen=True)
class CallResult(Generic[R]):
    value: R
    length: int  # tokens the session holds after the call
    forward_passes: int


@dataclass
class _Session:
    key: Hashable
    slot: int
    length: int = 0
    last_used: float = 0.0
    busy: bool = False


@dataclass
class _Call:
    key: Hashable
    start: int
    feed: list[int]
    step: Score | Draft
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future
    session: _Session | None = None
    kept_from: int = 0  # the session's length when this call began
    drawn: list = field(default_factory=list)
    passes: int = 0

    @property
    def rows(self) -> int:
        return self.step.rows if isinstance(self.step, Score) else 1


class SessionEngine:
    """A decoder whose cache slots belong to sessions that outlive a call.

    Args:
        model: the decoder; its cache is (re)allocated here for ``max_sessions`` slots.
        max_sessions: sessions held at once (KV-cache slots).
        max_seq_len: tokens per session; default min(model limit, 2048).
        ttl_s: an idle session older than this is dropped.
        chunk: most tokens of a long piece fed per iteration.
        max_queue: calls that may wait (beyond one per slot) before ``QueueFull``.
        threads: threads for the engine thread, split as in ``DecoderEngine`` (None leaves
            torch's setting).
        clock: the time source of TTL and LRU (tests pass a fake one).
        draft_vocab: token ids drafts are drawn from (a frequent vocabulary, as in FR-Spec,
            Zhao et al. 2025): a pass that serves only drafts computes those rows of the output
            layer alone, and every other token gets logit -inf. Exactness is untouched (the
            verifier decides; a sampled draft's distribution is the one really drawn from);
            only drafts outside the subset are lost.
    """

    def __init__(
        self,
        model: Transformer,
        *,
        max_sessions: int = 16,
        max_seq_len: int | None = None,
        ttl_s: float = 300.0,
        chunk: int = 64,
        max_queue: int = 64,
        threads: int | None = None,
        clock: Callable[[], float] = time.monotonic,
        draft_vocab: Tensor | None = None,
    ) -> None:
        if max_sessions < 1 or chunk < 1 or ttl_s <= 0 or max_queue < 0:
            raise ValueError("max_sessions and chunk must be >= 1, ttl_s > 0, max_queue >= 0")
        self.model = model
        self.max_sessions = max_sessions
        self.max_seq_len = max_seq_len or min(model.config.max_position_embeddings, 2048)
        self.ttl_s = ttl_s
        self.chunk = chunk
        self.max_queue = max_queue
        self._torch_threads = torch_threads(model, threads)
        self.vocab_size = model.config.vocab_size
        self.device = model.device
        self._clock = clock
        self._short = min(SHORT_PIECE, chunk)
        model.setup_cache(max_sessions, self.max_seq_len, max_chunk=max(chunk, self._short))
        self._draft_subset = None if draft_vocab is None else model.output_subset(draft_vocab)

        self._cv = threading.Condition()
        self._incoming: deque[_Call] = deque()
        self._closing = False
        self._fatal: BaseException | None = None
        # The engine thread's alone: sessions by key in LRU order (oldest first), free slots.
        self._sessions: OrderedDict[Hashable, _Session] = OrderedDict()
        self._free = list(range(max_sessions))
        self._waiting: list[_Call] = []  # resolved to no session yet, or their session is busy
        self._running: list[_Call] = []
        self._done: list[tuple[_Call, Any]] = []
        self.forward_passes = 0
        self.evictions = 0
        self.expirations = 0
        self._thread = threading.Thread(target=self._run, name="tierlm-sessions", daemon=True)
        self._thread.start()

    @property
    def draft_vocab(self) -> Tensor | None:
        """The token ids drafts are drawn from (ascending), or None: every token."""
        return None if self._draft_subset is None else self._draft_subset.token_ids

    @classmethod
    def from_pretrained(cls, path: str | Path, *, dtype: torch.dtype = torch.float32, **kwargs) -> SessionEngine:
        """Load a model folder (HF or tierlm artifact) on a passing thread and start an engine."""
        from tierlm.edge.engine import on_passing_thread

        prepare_threads(kwargs.get("threads"))  # before loading: sessions are built while loading
        return on_passing_thread(lambda: cls(load_model(path, dtype), **kwargs))

    # ---- the caller's side (event loop) ----

    async def run(self, key: Hashable, start: int, tokens: Sequence[int], step: Score[R] | Draft[R]) -> CallResult:
        """Append ``tokens`` at position ``start`` of session ``key`` and run ``step``.

        ``start`` 0 opens the session (or starts it over); ``start`` at most its length cuts it
        there first. Raises :class:`SessionLost` when the engine holds fewer than ``start``
        tokens of it, ``InvalidRequest`` for tokens outside the vocabulary or past
        ``max_seq_len``, ``QueueFull`` and ``EngineClosed``.
        """
        tokens = list(tokens)
        self._check(start, tokens, step)
        loop = asyncio.get_running_loop()
        call = _Call(key, start, tokens, step, loop, loop.create_future())
        with self._cv:
            if self._fatal is not None:
                raise EngineError(f"engine failed: {self._fatal!r}")
            if self._closing:
                raise EngineClosed("the session engine is shutting down")
            if len(self._incoming) + len(self._waiting) + len(self._running) >= self.max_sessions + self.max_queue:
                raise QueueFull(f"{self.max_sessions + self.max_queue} calls in flight (the limit); retry shortly", 0.1)
            self._incoming.append(call)
            self._cv.notify()
        try:
            return await asyncio.shield(call.future)
        except asyncio.CancelledError:
            call.future.cancel()  # the engine drops it at its next iteration
            raise

    def _check(self, start: int, tokens: list[int], step: Score | Draft) -> None:
        if not tokens:
            raise InvalidRequest("no tokens to feed: a call brings at least one new token")
        if start < 0:
            raise InvalidRequest(f"start must be >= 0, got {start}")
        bad = next((t for t in tokens if not 0 <= t < self.vocab_size), None)
        if bad is not None:
            raise InvalidRequest(f"token id {bad} is outside the vocabulary (0..{self.vocab_size - 1})")
        if isinstance(step, Score) and not 1 <= step.rows <= min(len(tokens), self.chunk):
            raise InvalidRequest(f"rows must be in 1..{min(len(tokens), self.chunk)} (the tokens fed, at most a chunk), got {step.rows}")
        if isinstance(step, Draft) and step.k < 1:
            raise InvalidRequest(f"k must be >= 1, got {step.k}")
        end = start + len(tokens) + (step.k - 1 if isinstance(step, Draft) else 0)
        if end > self.max_seq_len:
            raise InvalidRequest(f"the session would hold {end} tokens; the context holds {self.max_seq_len}")

    def sessions(self) -> int:
        """Sessions held now."""
        with self._cv:
            return len(self._sessions)

    def close(self) -> None:
        """Stop the engine thread; calls still pending fail with ``EngineClosed``."""
        with self._cv:
            self._closing = True
            self._cv.notify_all()
        self._thread.join()

    async def aclose(self) -> None:
        await asyncio.to_thread(self.close)

    # ---- the engine thread ----

    def _run(self) -> None:
        if self._torch_threads:
            torch.set_num_threads(self._torch_threads)
        try:
            with torch.inference_mode():
                while self._iterate():
                    self._deliver()
        except BaseException as e:  # a bug or resource failure: fail everyone
            self._fatal = e
            raise
        finally:
            with self._cv:
                leftovers = list(self._incoming) + self._waiting + self._running
                self._incoming.clear()
            error = EngineClosed("the session engine shut down") if self._fatal is None else EngineError(f"engine failed: {self._fatal!r}")
            self._done += [(call, error) for call in leftovers]
            self._deliver()

    def _iterate(self) -> bool:
        with self._cv:
            while not (self._incoming or self._running or self._waiting or self._closing):
                self._cv.wait(timeout=self.ttl_s)
                self._expire()
            if self._closing:
                return False
            self._waiting += self._incoming
            self._incoming.clear()
        self._drop_cancelled()
        self._expire()
        self._admit()
        short = [c for c in self._running if len(c.feed) <= self._short]
        short_batch = [c for c in short if c.session.length + max(len(s.feed) for s in short) <= self.max_seq_len]
        if short_batch:
            self._guarded(short_batch, lambda: self._forward_short(short_batch))
        rest = [c for c in self._running if c not in short_batch]
        if rest:
            self._guarded([rest[0]], lambda: self._forward_piece(rest[0]))
        return True

    def _drop_cancelled(self) -> None:
        for call in [c for c in self._waiting + self._running if c.future.cancelled()]:
            self._end(call)

    def _expire(self) -> None:
        now = self._clock()
        for key in [k for k, s in self._sessions.items() if not s.busy and now - s.last_used > self.ttl_s]:
            self._free.append(self._sessions.pop(key).slot)
            self.expirations += 1

    def _admit(self) -> None:
        """Give waiting calls their session (in arrival order; one call per session at a time)."""
        for call in list(self._waiting):
            session = self._sessions.get(call.key)
            if session is not None and session.busy:
                continue
            if session is None or session.length < call.start:
                held = 0 if session is None else session.length
                if call.start > held:
                    self._waiting.remove(call)
                    state = "no tokens of the session" if session is None else f"only {held} tokens of the session"
                    self._done.append((call, SessionLost(
                        f"this engine holds {state} (expired, evicted or restarted); resend the context from position {held}",
                        held,
                    )))
                    continue
            if session is None:
                session = self._open(call.key)
                if session is None:
                    continue  # every slot is busy: wait for one
            self._waiting.remove(call)
            session.busy = True
            session.length = call.start  # a session is cut where its caller says its context ends
            session.last_used = self._clock()
            self._sessions.move_to_end(call.key)
            call.session, call.kept_from = session, call.start
            self._running.append(call)

    def _open(self, key: Hashable) -> _Session | None:
        if not self._free:
            idle = next((k for k, s in self._sessions.items() if not s.busy), None)
            if idle is None:
                return None
            self._free.append(self._sessions.pop(idle).slot)
            self.evictions += 1
        session = _Session(key, self._free.pop())
        self._sessions[key] = session
        return session

    def _guarded(self, calls: list[_Call], step: Callable[[], None]) -> None:
        """Run a forward; if it raises, fail (and forget the sessions of) only the calls it served."""
        try:
            step()
        except Exception as e:  # noqa: BLE001 - reported to each affected caller
            failure = EngineError(f"forward pass failed: {e!r}")
            failure.__cause__ = e
            for call in calls:
                if call in self._running:
                    self._sessions.pop(call.key, None)
                    self._free.append(call.session.slot)
                    call.session = None
                    self._end(call, failure)

    def _forward_short(self, calls: list[_Call]) -> None:
        """Every short piece in one forward pass, right-padded to the longest."""
        width = max(len(c.feed) for c in calls)
        # The logits each row needs are its last `rows` real positions; take enough trailing
        # positions for the row whose real tokens end earliest.
        wanted = max(width - len(c.feed) + c.rows for c in calls)
        dev = self.device
        tokens = torch.tensor([c.feed + [0] * (width - len(c.feed)) for c in calls], device=dev)
        positions = torch.stack([torch.arange(c.session.length, c.session.length + width, device=dev) for c in calls])
        slots = torch.tensor([c.session.slot for c in calls], device=dev)
        logits = self.model(tokens, positions, slots, logits=wanted, vocab=self._vocab_for(calls)).float()
        self.forward_passes += 1
        for row, call in enumerate(calls):
            fed = len(call.feed)
            end = wanted - (width - fed)
            self._advance(call, fed, logits[row, end - call.rows : end])

    def _vocab_for(self, calls: list[_Call]) -> OutputSubset | None:
        """The draft vocabulary for a pass that serves drafts alone; scores need every logit."""
        return self._draft_subset if all(isinstance(c.step, Draft) for c in calls) else None

    def _widened(self, logits: Tensor) -> Tensor:
        """Logits over the draft vocabulary ([..., V']) as full-vocabulary logits, -inf elsewhere."""
        full = logits.new_full((*logits.shape[:-1], self.vocab_size), float("-inf"))
        full[..., self._draft_subset.token_ids] = logits
        return full

    def _forward_piece(self, call: _Call) -> None:
        """One chunk of a long piece; the logits when it is the last (which keeps >= rows tokens)."""
        remaining = len(call.feed)
        n = remaining if remaining <= self.chunk else min(self.chunk, remaining - call.rows)
        pos = call.session.length
        dev = self.device
        last = n == remaining
        logits = self.model(
            torch.tensor([call.feed[:n]], device=dev),
            torch.arange(pos, pos + n, device=dev)[None],
            torch.tensor([call.session.slot], device=dev),
            logits=call.rows if last else "none",
            vocab=self._vocab_for([call]),
        )
        self.forward_passes += 1
        if last:
            self._advance(call, n, logits[0].float())
        else:
            call.feed = call.feed[n:]
            call.session.length += n
            call.passes += 1

    def _advance(self, call: _Call, fed: int, logits: Tensor) -> None:
        """The call's piece of ``fed`` tokens went through; act on its logits ([rows, V])."""
        call.session.length += fed
        call.passes += 1
        step = call.step
        try:
            if isinstance(step, Score):
                value, keep = step.then(logits)
                call.session.length = min(call.session.length, call.kept_from + keep)
                self._end(call, value)
                return
            last = logits[-1]
            token, info = step.choose(last if last.shape[-1] == self.vocab_size else self._widened(last))
        except Exception as e:  # noqa: BLE001 - the caller's callback failed: its call fails
            self._end(call, e)
            return
        call.drawn.append((token, info))
        if len(call.drawn) == step.k:
            self._end(call, call.drawn)
        else:
            call.feed = [token]

    def _end(self, call: _Call, outcome: Any = None) -> None:
        if call in self._running:
            self._running.remove(call)
        elif call in self._waiting:
            self._waiting.remove(call)
        session = call.session
        if session is not None:
            session.busy = False
            session.last_used = self._clock()
        if not call.future.cancelled():
            if not isinstance(outcome, BaseException):
                outcome = CallResult(outcome, session.length if session else 0, call.passes)
            self._done.append((call, outcome))

    def _deliver(self) -> None:
        """Hand finished calls to their event loops, one wake-up per loop per iteration."""
        if not self._done:
            return
        by_loop: dict[asyncio.AbstractEventLoop, list[tuple[asyncio.Future, Any]]] = {}
        for call, outcome in self._done:
            by_loop.setdefault(call.loop, []).append((call.future, outcome))
        self._done = []
        for loop, batch in by_loop.items():
            try:
                loop.call_soon_threadsafe(_settle, batch)
            except RuntimeError:  # that event loop is closed: nobody is waiting
                pass


def _settle(batch: list[tuple[asyncio.Future, Any]]) -> None:
    for future, outcome in batch:
        if future.done():
            continue
        if isinstance(outcome, BaseException):
            future.set_exception(outcome)
        else:
            future.set_result(outcome)
