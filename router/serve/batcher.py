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
"""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from tierlm.router.embeddings import TextEncoder


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
        self._waiting: list[tuple[str, asyncio.Future[np.ndarray]]] = []
        self._busy = False  # a batch is encoding, or one is about to start
        self.batches = 0  # encode calls so far (for tests and the bench)

    @property
    def model_id(self) -> str:
        return self.encoder.model_id

    async def embed(self, text: str) -> np.ndarray:
        """The unit-norm embedding of ``text``."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[np.ndarray] = loop.create_future()
        self._waiting.append((text, future))
        if not self._busy:
            self._busy = True
            if self.window_s > 0:
                loop.call_later(self.window_s, self._start, loop)
            else:
                loop.call_soon(self._start, loop)  # texts sent in this loop turn join the batch
        return await future

    def _start(self, loop: asyncio.AbstractEventLoop) -> None:
        batch = [(text, future) for text, future in self._waiting[: self.max_batch] if not future.cancelled()]
        del self._waiting[: self.max_batch]
        if not batch:
            self._next(loop)
            return
        self.batches += 1
        work = loop.run_in_executor(self._thread, self.encoder.encode, [text for text, _ in batch])
        work.add_done_callback(lambda done: self._deliver(loop, batch, done))

    def _deliver(self, loop: asyncio.AbstractEventLoop, batch: list, done: asyncio.Future) -> None:
        error = done.exception()
        for i, (_, future) in enumerate(batch):
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
