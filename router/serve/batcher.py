"""Sentence embeddings for concurrent requests, computed together and off the event loop.

Every request the router serves needs its query embedded (retrieved prompts, the learned
scorer) and some need an answer embedded (scorers on free-text answers). :class:`EncodeBatcher`
queues those texts and runs them through the encoder on one thread of its own, as few
``encode`` calls as the load allows: when the encoder is idle a text starts at once (after
``window_s``, zero by default, so a lone request waits for nothing), and texts arriving while
it is busy form the next batch, up to ``max_batch``. This is Triton's dynamic batching with
no queue delay, or vLLM's continuous batching for an encoder: batches grow with the load by
themselves. The event loop only moves texts and futures; onnxruntime and the tokenizer release
the GIL, so the loop keeps serving while a batch encodes.

A text may ask for its similarities to a retrieval pool's rows too (:meth:`EncodeBatcher.embed_compared`):
they are computed on the same thread as one product per pool for the whole batch, which reads
the pool's embeddings (7.7 MB for 5,000 rows) once for every query in the batch instead of once
per query, and leaves only the choice of the nearest rows to the event loop.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from tierlm.router.embeddings import Similarities, TextEncoder

Compared = tuple[np.ndarray, tuple[np.ndarray, ...]]
"""An embedding and its similarities to the rows of each pool asked for, in the order asked."""


class EncodeBatcher:
    """Awaitable, micro-batched :meth:`TextEncoder.encode` for one event loop.

    Args:
        encoder: the sentence encoder; only this batcher's thread calls it.
        max_batch: texts per ``encode`` call at most.
        window_s: how long an idle encoder waits for more texts before it starts a batch.
    """

    def __init__(self, encoder: TextEncoder, *, max_batch: int = 32, window_s: float = 0.0) -> None:
        if max_batch < 1 or window_s < 0:
            raise ValueError(f"need max_batch >= 1 and window_s >= 0, got {max_batch}, {window_s}")
        self.encoder = encoder
        self.max_batch = max_batch
        self.window_s = window_s
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="tierlm-encode")
        self._waiting: list[tuple[str, Sequence[Similarities], asyncio.Future[Compared]]] = []
        self._busy = False  # a batch is encoding, or one is about to start
        self.batches = 0  # encode calls so far (for tests and the bench)

    @property
    def model_id(self) -> str:
        return self.encoder.model_id

    async def embed(self, text: str) -> np.ndarray:
        """The unit-norm embedding of ``text``."""
        return (await self.embed_compared(text, ()))[0]

    async def embed_compared(self, text: str, pools: Sequence[Similarities]) -> Compared:
        """The unit-norm embedding of ``text`` and its similarities to each of ``pools``' rows."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Compared] = loop.create_future()
        self._waiting.append((text, tuple(pools), future))
        if not self._busy:
            self._busy = True
            if self.window_s > 0:
                loop.call_later(self.window_s, self._start, loop)
            else:
                loop.call_soon(self._start, loop)  # texts sent in this loop turn join the batch
        return await future

    def _start(self, loop: asyncio.AbstractEventLoop) -> None:
        batch = [item for item in self._waiting[: self.max_batch] if not item[2].cancelled()]
        del self._waiting[: self.max_batch]
        if not batch:
            self._next(loop)
            return
        self.batches += 1
        work = loop.run_in_executor(self._thread, self._encode_and_compare, [text for text, _, _ in batch],
                                    [pools for _, pools, _ in batch])
        work.add_done_callback(lambda done: self._deliver(loop, batch, done))

    def _encode_and_compare(self, texts: list[str], wanted: list[tuple[Similarities, ...]]) -> list[Compared]:
        embeddings = self.encoder.encode(texts)
        found: list[dict[int, np.ndarray]] = [{} for _ in texts]
        for pool in {id(pool): pool for pools in wanted for pool in pools}.values():
            members = [i for i, pools in enumerate(wanted) if any(p is pool for p in pools)]
            for i, similarity in zip(members, pool(embeddings[members])):
                found[i][id(pool)] = similarity
        return [(embeddings[i], tuple(found[i][id(pool)] for pool in pools)) for i, pools in enumerate(wanted)]

    def _deliver(self, loop: asyncio.AbstractEventLoop, batch: list, done: asyncio.Future) -> None:
        error = done.exception()
        for i, (_, _, future) in enumerate(batch):
            if future.done():  # its request was cancelled meanwhile
                continue
            if error is not None:
                future.set_exception(error)
            else:
                future.set_result(done.result()[i])
        self._next(loop)

    def _next(self, loop: asyncio.AbstractEventLoop) -> None:
        # Texts that arrived during the batch have waited already: start them at once.
        if self._waiting:
            self._start(loop)
        else:
            self._busy = False

    def close(self) -> None:
        """Stop the encoding thread (after the batch in progress)."""
        self._thread.shutdown(wait=True)
