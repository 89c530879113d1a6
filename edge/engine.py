"""The continuous-batching inference engine of an edge node (and the cloud's torch fallback).

One dedicated thread owns the model. Each iteration of its loop

1. drops requests whose consumer went away (cancel, deadline) and frees their slots,
2. admits waiting requests into free KV-cache slots,
3. runs one decode step for every request that is generating (one batched forward), and
4. feeds admitted prompts, oldest first, at most `prefill_chunk` tokens in all (a long
   prompt takes several iterations; several short ones can share one, and chunks of the same
   length share one forward call),

so requests join and leave the running batch at token granularity, and prompts delay running
streams by one chunk's worth of compute per token at most. Callers use the asyncio API
(`DecoderEngine.stream`, `DecoderEngine.generate`); results cross from the thread to the event loop with
`call_soon_threadsafe`, once per model step for all the events it produced.
"""

from __future__ import annotations

import asyncio
import enum
import heapq
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import TypeVar

import torch

from tierlm.edge.errors import EngineClosed, EngineError, QueueFull
from tierlm.edge.decoder import Transformer, load_model
from tierlm.edge.prepare import PreparedRequest, RequestPreparer
from tierlm.edge.requests import ChoiceScore, Completion, FinishReason, GenerationRequest, TokenDelta
from tierlm.edge.sampling import greedy_tokens, sample, token_logprobs
from tierlm.edge.stats import EngineHealth, EngineObserver, EngineStats
from tierlm.edge.text import TextAssembler
from tierlm.edge.threads import prepare as prepare_threads
from tierlm.edge.threads import torch_threads

log = logging.getLogger(__name__)

Event = TokenDelta | Completion
T = TypeVar("T")


@dataclass(frozen=True)
class _Mailbox:
    """Where one request's events go: a queue read on the caller's event loop."""

    loop: asyncio.AbstractEventLoop
    queue: asyncio.Queue


def _put_all(items: list[tuple[asyncio.Queue, Event | BaseException]]) -> None:
    for queue, item in items:
        queue.put_nowait(item)


class _Phase(enum.Enum):
    WAITING = enum.auto()
    PREFILL = enum.auto()  # feeding the prompt
    SCORING = enum.auto()  # feeding choice continuations
    DECODE = enum.auto()


class _Sequence:
    """The engine thread's state of one request."""

    def __init__(self, prepared: PreparedRequest, mailbox: _Mailbox, tokenizer, device: torch.device) -> None:
        request = prepared.request
        self.prepared = prepared
        self.request = request
        self.mailbox = mailbox
        self.submitted_at = time.perf_counter()
        self.phase = _Phase.WAITING
        self.cancelled = False  # set from any thread; read by the engine thread
        self.slot = -1
        self.pos = 0  # next cache position to write
        self.feed: list[int] = list(prepared.prompt_ids)  # tokens still to run through the model
        self.next_token = -1  # last sampled token, fed by the next decode step
        self.output_ids: list[int] = []
        self.logprobs: list[float] | None = [] if request.logprobs else None
        self.generator = torch.Generator(device).manual_seed(prepared.seed) if request.temperature > 0 else None
        self.text = TextAssembler(tokenizer, prepared.prompt_ids, prepared.stop)
        self.first_token_at: float | None = None
        self.last_token_at = 0.0
        # Choice scoring: choice i's score starts at the log-prob of its first token after the
        # prompt; its remaining tokens come from feeding choice[:-1] after the prompt.
        self.scores: list[float] = []
        self.targets: list[int] = []  # for the choice being fed: the token each fed position predicts
        self.choice = -1
        self.choice_fed = 0  # tokens of the current choice fed so far

    @property
    def plain_prefill(self) -> bool:
        """Feeding a prompt that ends in generation, not in choice scoring: such chunks of
        several requests can share a forward call."""
        return self.phase is _Phase.PREFILL and self.prepared.choice_ids is None


class RequestStream:
    """Async iterator over one request's events: `TokenDelta`s, then one `Completion`.

    Leaving the iteration early (break, task cancellation, deadline) or calling `cancel()`
    frees the request's slot within one engine step. The concatenated `TokenDelta.text`s
    equal `Completion.text`.
    """

    def __init__(self, engine: DecoderEngine, seq: _Sequence, queue: asyncio.Queue) -> None:
        self._engine = engine
        self._seq = seq
        self._queue = queue
        self._done = False

    @property
    def request_id(self) -> str:
        return self._seq.request.request_id

    def __aiter__(self) -> RequestStream:
        return self

    async def __anext__(self) -> Event:
        if self._done:
            raise StopAsyncIteration
        try:
            item = await self._queue.get()
        except asyncio.CancelledError:
            self.cancel()
            raise
        if isinstance(item, BaseException):
            self._done = True
            raise item
        if isinstance(item, Completion):
            self._done = True
        return item

    def cancel(self) -> None:
        """Stop generating; the engine frees the slot at its next step."""
        if not self._done:
            self._done = True
            self._seq.cancelled = True

    async def aclose(self) -> None:
        self.cancel()

    def __del__(self) -> None:
        # Only sets a flag: safe from any thread and from the garbage collector.
        self.cancel()


def on_passing_thread(fn: Callable[[], T]) -> T:
    """``fn()`` on a new thread that has exited by the time this returns (its result or error).

    torch's CPU ops run on OpenMP, and libgomp keeps one worker team per calling thread. A
    thread that loads a model (copies, dequantization, cache allocation: all parallel regions)
    keeps its idle team for good, and once the process has more OpenMP workers than cores,
    libgomp stops spinning between regions: every parallel op of the decode thread then waits
    for a futex wake-up (~0.1 ms each on a 2-core VM, several times a thin matmul's time).
    Gemma 3 270M at batch 1 on 2 threads (bench/compression.py, before and after): fp32 decode
    15.1 -> 19.8 tok/s, the sparse + low-rank composite 12.5 -> 21.3. A thread's team is freed
    when the thread exits, so loading here leaves the decode thread's team the only one.
    """
    result: list[T] = []
    error: list[BaseException] = []

    def run() -> None:
        try:
            result.append(fn())
        except BaseException as e:  # re-raised on the caller's thread below
            error.append(e)

    thread = threading.Thread(target=run, name="tierlm-edge-load", daemon=True)  # Ctrl-C need not wait
    thread.start()
    thread.join()
    if error:
        raise error[0]
    return result[0]


class DecoderEngine:
    """Continuous-batching text generation over a `Transformer` with a slotted KV cache.

    Build the model on a thread that then exits (`from_pretrained` does, see
    `on_passing_thread`): torch work left on a long-lived thread slows every decode step.

    Args:
        model: the decoder, on the device the engine computes on (its cache is (re)allocated here).
        tokenizer: an HF tokenizer for the model.
        max_batch: requests decoded together (KV-cache slots).
        max_queue: admitted requests that may wait for a slot; beyond that `QueueFull`.
        max_seq_len: positions per slot (prompt + output); default min(model limit, 2048).
        prefill_chunk: most prompt tokens fed per engine step.
        threads: threads for the decode thread: torch's, or split between torch and
            onnxruntime's shared pool when the model runs on it (`tierlm.edge.threads`);
            None leaves torch's setting alone.
        observer: metric hooks, see `EngineObserver`.
        max_choices: most choices per scoring request.
        compile: compile the decode step (`Transformer.compile_decode`): faster steps for a
            start-up that is a minute or two longer the first time.
    """

    def __init__(
        self,
        model: Transformer,
        tokenizer,
        *,
        max_batch: int = 8,
        max_queue: int = 32,
        max_seq_len: int | None = None,
        prefill_chunk: int = 64,
        threads: int | None = None,
        observer: EngineObserver | None = None,
        max_choices: int = 64,
        compile: bool = False,
    ) -> None:
        if max_batch < 1 or max_queue < 0 or prefill_chunk < 1:
            raise ValueError("max_batch and prefill_chunk must be >= 1, max_queue >= 0")
        self.model = model
        self.tokenizer = tokenizer
        self.max_batch = max_batch
        self.max_queue = max_queue
        self.max_seq_len = max_seq_len or min(model.config.max_position_embeddings, 2048)
        self.prefill_chunk = prefill_chunk
        self._torch_threads = torch_threads(model, threads)
        self.device = model.device
        self.observer = observer or EngineObserver()
        self._preparer = RequestPreparer(tokenizer, self.max_seq_len, max_choices)
        self._eos = frozenset(model.config.eos_token_ids) | (
            {tokenizer.eos_token_id} if tokenizer.eos_token_id is not None else set()
        )
        # One product for q/k/v and one for gate/up: three fewer linear calls per layer and step.
        model.fuse_projections()
        model.setup_cache(max_batch, self.max_seq_len, max_chunk=prefill_chunk)
        if compile:
            if self._torch_threads:
                torch.set_num_threads(self._torch_threads)  # the graphs' kernels are built for this many
            log.info("compiling the decode step (a minute or two per graph the first time; cached after)")
            model.compile_decode()

        self._cv = threading.Condition()
        self._waiting: deque[_Sequence] = deque()
        self._running: list[_Sequence] = []  # admission order: the oldest prompt prefills first
        self._free_slots = list(range(max_batch))  # a heap: lowest slots first keeps batches contiguous
        self._closing = False
        self._drain = True
        self._fatal: BaseException | None = None
        self._latency_ema_s = 1.0
        self._finished: dict[str, int] = {}
        self._failed = self._rejected = self._prompt_tokens = self._completion_tokens = 0
        self._decode_steps = self._prefill_chunks = 0
        self._outbox: list[tuple[_Sequence, Event | BaseException]] = []  # the decode thread's alone
        self._thread = threading.Thread(target=self._run, name="tierlm-edge-engine", daemon=True)
        self._thread.start()

    @classmethod
    def from_pretrained(
        cls, path: str | Path, *, dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu", **kwargs
    ) -> DecoderEngine:
        """Load an HF model folder (config.json, safetensors, tokenizer files) and start an engine."""
        from transformers import AutoTokenizer

        prepare_threads(kwargs.get("threads"))  # before loading: sessions are built while loading

        def build() -> DecoderEngine:
            return cls(load_model(path, dtype, device), AutoTokenizer.from_pretrained(str(path)), **kwargs)

        return on_passing_thread(build)

    # ---- the caller's side (event loop) ----

    def stream(self, request: GenerationRequest) -> RequestStream:
        """Admit `request` and return its event stream; call from a running event loop.

        Raises at once: `InvalidRequest` (bad input), `QueueFull` (overloaded, with a retry
        hint), `EngineClosed` (shutting down) or `EngineError` (the engine failed).
        """
        mailbox = _Mailbox(asyncio.get_running_loop(), asyncio.Queue())
        prepared = self._preparer.prepare(request)
        seq = _Sequence(prepared, mailbox, self.tokenizer, self.device)
        self._submit(seq)
        return RequestStream(self, seq, mailbox.queue)

    async def generate(self, request: GenerationRequest) -> Completion:
        """Run `request` to completion and return its `Completion` (same errors as `stream`)."""
        async for event in self.stream(request):
            if isinstance(event, Completion):
                return event
        raise EngineError("the request ended without a result")

    async def health(self) -> EngineHealth:
        """Whether the engine accepts requests."""
        if self._fatal is not None:
            return EngineHealth(False, f"engine failed: {self._fatal!r}")
        if self._closing or not self._thread.is_alive():
            return EngineHealth(False, "engine is shutting down")
        return EngineHealth(True, "serving")

    def stats(self) -> EngineStats:
        """Current load and totals."""
        with self._cv:
            return EngineStats(
                running=len(self._running),
                waiting=len(self._waiting),
                max_batch=self.max_batch,
                max_queue=self.max_queue,
                requests_finished=dict(self._finished),
                requests_failed=self._failed,
                requests_rejected=self._rejected,
                prompt_tokens=self._prompt_tokens,
                completion_tokens=self._completion_tokens,
                decode_steps=self._decode_steps,
                prefill_chunks=self._prefill_chunks,
            )

    def close(self, drain: bool = True, timeout: float | None = None) -> None:
        """Stop accepting requests and stop the decode thread.

        With `drain`, admitted requests finish first (for at most `timeout` seconds, then the
        rest are cancelled); without, they end at once with finish reason CANCELLED.
        Blocks; from a coroutine use `aclose`.
        """
        with self._cv:
            self._closing, self._drain = True, self._drain and drain
            self._cv.notify_all()
        self._thread.join(timeout)
        if self._thread.is_alive():
            with self._cv:
                self._drain = False
                self._cv.notify_all()
            self._thread.join()

    async def aclose(self, timeout: float | None = None, *, drain: bool = True) -> None:
        """`close` without blocking the event loop (streams keep flowing while draining)."""
        await asyncio.to_thread(self.close, drain, timeout)

    def __enter__(self) -> DecoderEngine:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def _submit(self, seq: _Sequence) -> None:
        with self._cv:
            if self._fatal is not None:
                raise EngineError(f"engine failed: {self._fatal!r}")
            if self._closing:
                raise EngineClosed("the engine is shutting down; send the request elsewhere")
            if len(self._waiting) + len(self._running) >= self.max_batch + self.max_queue:
                self._rejected += 1
                retry = max(0.05, self._latency_ema_s * (len(self._waiting) + 1) / self.max_batch)
                full = QueueFull(
                    f"{len(self._running)} requests running and {len(self._waiting)} waiting (the limits); "
                    f"retry in about {retry:.2f} s",
                    retry_after_s=retry,
                )
            else:
                self._waiting.append(seq)
                self._cv.notify()
                return
        self.observer.on_reject()
        raise full

    # ---- the decode thread ----

    def _run(self) -> None:
        if self._torch_threads:
            torch.set_num_threads(self._torch_threads)
        try:
            with torch.inference_mode():
                while self._iterate():
                    self._flush()
        except BaseException as e:  # a bug or resource failure: fail everyone, report unhealthy
            self._fatal = e
            with self._cv:
                victims = list(self._running) + list(self._waiting)
            for seq in victims:
                self._fail(seq, e)
        finally:
            self._flush()

    def _iterate(self) -> bool:
        """One scheduler iteration; False when the thread should exit."""
        with self._cv:
            while not (self._waiting or self._running or self._closing):
                self._cv.wait()
            stopping = self._closing and (not self._drain or not (self._waiting or self._running))
        if stopping:
            with self._cv:
                leftovers = list(self._running) + list(self._waiting)
            for seq in leftovers:
                self._finish(seq, FinishReason.CANCELLED)
            return False
        self._reap_cancelled()
        self._admit()
        decoding = sorted((s for s in self._running if s.phase is _Phase.DECODE), key=lambda s: s.slot)
        if decoding:
            self._guarded(decoding, lambda: self._decode_step(decoding))
        budget = self.prefill_chunk
        feeding = [s for s in self._running if s.phase in (_Phase.PREFILL, _Phase.SCORING)]
        while feeding and budget > 0:
            seq = feeding.pop(0)
            if not seq.plain_prefill:
                fed = self._guarded([seq], partial(self._feed_chunk, seq, budget))
            else:
                rows, n = self._prefill_group(seq, feeding, budget)
                fed = self._guarded(rows, partial(self._prefill_rows, rows, n))
            budget -= fed or budget  # a failed step ends this iteration's feeding
        return True

    @staticmethod
    def _prefill_group(first: _Sequence, feeding: list[_Sequence], budget: int) -> tuple[list[_Sequence], int]:
        """`first` and the plain prefills after it (taken out of `feeding`) that have at least
        as many prompt tokens left as `first` feeds now (returned beside them), as many as
        `budget` tokens allow: one
        forward call feeds them all, and requests that arrive together (a burst, a client's
        parallel calls) get their first tokens after one call rather than one call each."""
        n = min(len(first.feed), budget)
        rows = [first] + [s for s in feeding if s.plain_prefill and len(s.feed) >= n][: budget // n - 1]
        for seq in rows[1:]:
            feeding.remove(seq)
        return rows, n

    def _reap_cancelled(self) -> None:
        with self._cv:
            gone = [s for s in self._waiting if s.cancelled] + [s for s in self._running if s.cancelled]
        for seq in gone:
            self._finish(seq, FinishReason.CANCELLED)

    def _admit(self) -> None:
        with self._cv:
            while self._waiting and self._free_slots:
                seq = self._waiting.popleft()
                seq.slot = heapq.heappop(self._free_slots)
                seq.phase = _Phase.PREFILL
                self._running.append(seq)
                self._prompt_tokens += len(seq.prepared.prompt_ids)

    def _guarded(self, seqs: list[_Sequence], step: Callable[[], T]) -> T | None:
        """Run a model step; if it raises, fail only the requests it served and carry on."""
        try:
            return step()
        except Exception as e:  # noqa: BLE001 - reported to each affected caller
            for seq in seqs:
                if seq in self._running:
                    self._fail(seq, e)
            return None
        finally:
            self._flush()  # the step's tokens go out before the next step starts

    def _decode_step(self, seqs: list[_Sequence]) -> None:
        dev = self.device
        tokens = torch.tensor([[s.next_token] for s in seqs], device=dev)
        positions = torch.tensor([[s.pos] for s in seqs], device=dev)
        slots = torch.tensor([s.slot for s in seqs], device=dev)
        logits = self.model.decode(tokens, positions, slots)
        self._decode_steps += 1
        # One argmax over the batch instead of one per greedy row (sampled rows ignore theirs).
        best = greedy_tokens(logits)
        for row, seq, greedy in zip(logits, seqs, best):
            seq.pos += 1
            self._emit(seq, row, greedy)

    def _prefill_rows(self, seqs: list[_Sequence], n: int) -> int:
        """Feed the next `n` prompt tokens of each of `seqs` (plain prefills) in one call, and
        stream the first token of each whose prompt that ends; return the tokens fed."""
        dev = self.device
        chunks = []
        for seq in seqs:
            chunk, seq.feed = seq.feed[:n], seq.feed[n:]
            chunks.append(chunk)
        ending = [not seq.feed for seq in seqs]
        logits = self.model(
            torch.tensor(chunks, device=dev),
            torch.tensor([[seq.pos + i for i in range(n)] for seq in seqs], device=dev),
            torch.tensor([seq.slot for seq in seqs], device=dev),
            logits="last" if any(ending) else "none",
        )
        self._prefill_chunks += 1
        for row, (seq, last) in enumerate(zip(seqs, ending)):
            seq.pos += n
            if last:
                self._emit(seq, logits[row, -1])
        return n * len(seqs)

    def _feed_chunk(self, seq: _Sequence, limit: int) -> int:
        """Feed up to `limit` of the pending tokens of `seq`, a choice-scoring request (its
        prompt, then its choices); return how many were fed."""
        chunk, seq.feed = seq.feed[:limit], seq.feed[limit:]
        scoring, last = seq.phase is _Phase.SCORING, not seq.feed
        choosing = last and not scoring and seq.prepared.choice_ids is not None
        n = len(chunk)
        dev = self.device
        # Constrained choice scoring reads only the allowed tokens' logits at each position.
        allowed = self._allowed_tokens(seq, n) if (scoring or choosing) and seq.prepared.choice_tree else None
        vocab = None if allowed is None else sorted(set().union(*allowed))
        logits = self.model(
            torch.tensor([chunk], device=dev),
            torch.arange(seq.pos, seq.pos + n, device=dev)[None],
            torch.tensor([seq.slot], device=dev),
            logits="all" if scoring else "last" if last else "none",
            vocab=None if vocab is None else torch.tensor(vocab, device=dev),
        )
        self._prefill_chunks += 1
        seq.pos += n
        if scoring:
            targets, seq.targets = seq.targets[:n], seq.targets[n:]
            seq.choice_fed += n
            seq.scores[seq.choice] += self._target_logprobs(logits[0], targets, vocab, allowed)
            if last:
                self._next_choice(seq)
        elif choosing:
            # Constrained, the columns are exactly the allowed first tokens.
            first = torch.log_softmax(logits[0, -1].float(), dim=-1)
            column = range(first.shape[0]) if vocab is None else {token: i for i, token in enumerate(vocab)}
            seq.scores = [float(first[column[ids[0]]]) for ids in seq.prepared.choice_ids]
            seq.phase = _Phase.SCORING
            self._next_choice(seq)
        return n

    @staticmethod
    def _allowed_tokens(seq: _Sequence, n: int) -> list[tuple[int, ...]]:
        """For each of the `n` positions being fed, the tokens a constrained choice may take next:
        after the prompt, every choice's first token; inside choice i, its siblings' next tokens."""
        tree = seq.prepared.choice_tree
        if seq.phase is not _Phase.SCORING:
            return [tree.allowed(())]
        ids = seq.prepared.choice_ids[seq.choice]
        return [tree.allowed(ids[: seq.choice_fed + j + 1]) for j in range(n)]

    def _target_logprobs(
        self,
        logits: torch.Tensor,
        targets: list[int],
        vocab: list[int] | None,
        allowed: list[tuple[int, ...]] | None,
    ) -> float:
        """Summed log-probability of `targets`, one per row of `logits`: under the whole
        vocabulary, or (constrained) renormalised over each position's allowed tokens, whose
        logits are the columns `vocab` names."""
        if vocab is None:
            return float(token_logprobs(logits, torch.tensor(targets, device=self.device)).sum())
        column = {token: i for i, token in enumerate(vocab)}
        total = 0.0
        for row, target, tokens in zip(logits, targets, allowed):
            restricted = row[[column[t] for t in tokens]].float()
            total += float(restricted[tokens.index(target)] - torch.logsumexp(restricted, dim=0))
        return total

    def _next_choice(self, seq: _Sequence) -> None:
        """Queue the next multi-token choice's continuation, or finish when none is left."""
        choices = seq.prepared.choice_ids
        seq.choice += 1
        while seq.choice < len(choices) and len(choices[seq.choice]) == 1:
            seq.choice += 1  # a one-token choice is scored by the prompt's last logits alone
        if seq.choice == len(choices):
            self._finish(seq, FinishReason.SCORED)
            return
        ids = choices[seq.choice]
        # Every choice continues from the end of the prompt; it overwrites the previous
        # choice's cache entries, which no one reads again.
        seq.pos = len(seq.prepared.prompt_ids)
        seq.feed, seq.targets = list(ids[:-1]), list(ids[1:])
        seq.choice_fed = 0

    def _emit(self, seq: _Sequence, logits: torch.Tensor, greedy: int | None = None) -> None:
        """Sample the next token of `seq` from `logits` ([V]), stream it, and decide whether to stop.

        `greedy` is the argmax of `logits` when the caller has it already.
        """
        request = seq.request
        if request.temperature == 0.0 and greedy is not None:
            token = greedy
        else:
            token = sample(logits, request.temperature, request.top_p, seq.generator)
        logprob = None
        if seq.logprobs is not None:
            logprob = float(token_logprobs(logits[None], torch.tensor([token], device=self.device))[0])
            seq.logprobs.append(logprob)
        seq.output_ids.append(token)
        now = time.perf_counter()
        if seq.first_token_at is None:
            seq.first_token_at = now
            self.observer.on_first_token(now - seq.submitted_at)
        else:
            self.observer.on_token(now - seq.last_token_at)
        seq.last_token_at = now

        reason = None
        if token in self._eos and not request.ignore_eos:
            delta, reason = seq.text.flush(), FinishReason.EOS
        else:
            delta = seq.text.add(token)
            if seq.text.stopped:
                reason = FinishReason.STOP
            elif len(seq.output_ids) >= request.max_tokens or seq.pos >= self.max_seq_len:
                delta, reason = delta + seq.text.flush(), FinishReason.LENGTH
        self._deliver(seq, TokenDelta(token, delta, logprob))
        if reason is not None:
            self._finish(seq, reason)
        else:
            seq.next_token = token
            seq.phase = _Phase.DECODE

    def _finish(self, seq: _Sequence, reason: FinishReason) -> None:
        now = time.perf_counter()
        choices = None
        text = seq.text.text
        if reason is FinishReason.SCORED:
            choices = tuple(
                ChoiceScore(c, s, len(ids))
                for c, s, ids in zip(seq.request.choices, seq.scores, seq.prepared.choice_ids)
            )
            text = max(choices, key=lambda c: c.logprob).text
            seq.first_token_at = now
            self.observer.on_first_token(now - seq.submitted_at)
        completion = Completion(
            request_id=seq.request.request_id,
            text=text,
            finish_reason=reason,
            prompt_tokens=len(seq.prepared.prompt_ids),
            completion_tokens=len(seq.output_ids),
            token_ids=tuple(seq.output_ids),
            token_logprobs=tuple(seq.logprobs) if seq.logprobs is not None else None,
            choices=choices,
            ttft_s=(seq.first_token_at or now) - seq.submitted_at,
            latency_s=now - seq.submitted_at,
        )
        self._release(seq)
        with self._cv:
            self._finished[reason.value] = self._finished.get(reason.value, 0) + 1
            self._completion_tokens += len(seq.output_ids)
            if reason is not FinishReason.CANCELLED:
                self._latency_ema_s = 0.8 * self._latency_ema_s + 0.2 * completion.latency_s
        self._deliver(seq, completion)
        self.observer.on_finish(completion)

    def _fail(self, seq: _Sequence, error: BaseException) -> None:
        self._release(seq)
        with self._cv:
            self._failed += 1
        failure = EngineError(f"generation failed: {error!r}")
        failure.__cause__ = error
        self._deliver(seq, failure)

    def _release(self, seq: _Sequence) -> None:
        with self._cv:
            if seq in self._running:
                self._running.remove(seq)
                heapq.heappush(self._free_slots, seq.slot)
            elif seq in self._waiting:
                self._waiting.remove(seq)

    def _deliver(self, seq: _Sequence, item: Event | BaseException) -> None:
        self._outbox.append((seq, item))

    def _flush(self) -> None:
        """Hand the buffered events to their event loops, one wake-up per loop.

        A wake-up per token let the loop's thread take the GIL in the middle of every model
        step, and the decode thread then waited up to the interpreter's switch interval (5 ms)
        to get it back: at 8 streams that cost more than the output layer.
        """
        if not self._outbox:
            return
        by_loop: dict[asyncio.AbstractEventLoop, list[tuple[_Sequence, Event | BaseException]]] = {}
        for seq, item in self._outbox:
            by_loop.setdefault(seq.mailbox.loop, []).append((seq, item))
        self._outbox = []
        for loop, batch in by_loop.items():
            try:
                loop.call_soon_threadsafe(_put_all, [(seq.mailbox.queue, item) for seq, item in batch])
            except RuntimeError:  # the consumer's event loop is closed: nobody is listening
                for seq, _ in batch:
                    seq.cancelled = True
