"""No-LLM tiers: Generators that answer label-choice requests from the query's MiniLM embedding.

FrugalGPT's "LLM approximation": a classifier over the sentence embedding of the query answers
without any language model. Such a tier speaks the same contract as every tier, so collection,
the cascade and the router use it unchanged. Subclasses say how labels are scored
(:class:`~tierlm.router.nollm.knn_tier.KnnGenerator`, :class:`~tierlm.router.nollm.probe_tier.ProbeGenerator`);
this class parses the request, finds whether the query is one of the labelled pool rows (which
must then not answer for itself) and builds the reply.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping, Sequence

import grpc
import numpy as np

from tierlm.errors import GenerationError
from tierlm.router.embeddings import TextEncoder
from tierlm.router.prompting import Labelled, request_query
from tierlm.v1 import generator_pb2, generator_pb2_grpc


def pool_labels(pool: Sequence[Labelled]) -> tuple[str, ...]:
    """The pool's label set, in the order its rows' ``choices`` list them (else first seen)."""
    labels: dict[str, None] = {}
    for row in pool:
        labels.update(dict.fromkeys(getattr(row, "choices", None) or ()))
        labels[row.label] = None
    return tuple(labels)


def _normalized(text: str) -> str:
    return " ".join(text.casefold().split())


class EmbeddingTier(generator_pb2_grpc.GeneratorServicer):
    """Label-choice answers from a classifier over the query embedding; see the module docstring.

    A request's ``choices`` (label continuations such as ``" up"``) restrict the answer to
    those labels; without choices the tier answers among all of its labels.

    Args:
        encoder: the sentence encoder (queries and pool rows).
        pool: the labelled rows the classifier learns from.
        tier_name: reported in every reply.
        pool_embeddings: the pool's embeddings by ``encoder`` if already computed (row ``i``
            for ``pool[i]``); otherwise the pool is encoded here.
    """

    model_name = ""
    """The ``model`` a reply reports and a policy tier names to get this tier."""

    def __init__(self, encoder: TextEncoder, pool: Sequence[Labelled], tier_name: str,
                 pool_embeddings: np.ndarray | None = None):
        self.encoder = encoder
        self.tier_name = tier_name
        self.labels = pool_labels(pool)
        self._pool_index = {_normalized(row.query): i for i, row in enumerate(pool)}
        if pool_embeddings is None:
            pool_embeddings = encoder.encode([row.query for row in pool])
        elif len(pool_embeddings) != len(pool):
            raise ValueError(f"{len(pool_embeddings)} pool embeddings for {len(pool)} pool rows")
        self.pool_embeddings = pool_embeddings

    def predict(
        self, query_embedding: np.ndarray, own_row: int | None, similarity: np.ndarray | None = None
    ) -> tuple[str, Mapping[str, float]]:
        """The answer label and the log-probability (or a smoothed stand-in) of every label;
        ``own_row`` is the pool row equal to the query, which must not take part, or None;
        ``similarity`` the query's similarity to every pool row, if the caller has it."""
        raise NotImplementedError

    def answer(
        self, request: generator_pb2.GenerateRequest, embedding: np.ndarray | None = None,
        similarity: np.ndarray | None = None,
    ) -> generator_pb2.GenerateResponse:
        """Answer one label-choice request synchronously; ``embedding`` (and ``similarity``, as
        in :meth:`predict`) of the request's query if the caller computed them already (the
        router, for a tier it runs itself), else the query is encoded here."""
        started = time.perf_counter()
        choices = list(request.choices) or list(self.labels)
        if set(c.strip() for c in choices) - set(self.labels):
            raise GenerationError(
                grpc.StatusCode.INVALID_ARGUMENT, f"{self.model_name} answers label choices among {list(self.labels)}"
            )
        query = request_query(request)
        own_row = self._pool_index.get(_normalized(query))
        if embedding is None:
            embedding, similarity = self.encoder.encode([query])[0], None
        winner, logprobs = self.predict(embedding, own_row, similarity)
        scores = {c: float(logprobs[c.strip()]) for c in choices}
        # The classifier's own winner when it is among the choices (its tie-breaks included),
        # else the likeliest choice.
        best = next((c for c in choices if c.strip() == winner), max(scores, key=scores.get))
        latency_ms = (time.perf_counter() - started) * 1e3
        return generator_pb2.GenerateResponse(
            request_id=request.request_id, text=best,
            choice_logprobs=[generator_pb2.ChoiceLogprob(choice=c, logprob=v, num_tokens=1) for c, v in scores.items()],
            usage=generator_pb2.Usage(prompt_tokens=len(query.split()), completion_tokens=1),
            finish_reason=generator_pb2.FINISH_REASON_CHOICE, latency_ms=latency_ms, ttft_ms=latency_ms,
            model=self.model_name, tier=self.tier_name, is_final=True,
        )

    async def generate(self, request: generator_pb2.GenerateRequest) -> generator_pb2.GenerateResponse:
        """:meth:`answer` off the event loop."""
        return await asyncio.to_thread(self.answer, request)

    async def Generate(self, request: generator_pb2.GenerateRequest, context: grpc.aio.ServicerContext):
        try:
            return await self.generate(request)
        except GenerationError as exc:
            await context.abort(exc.code, str(exc))

    async def GenerateStream(self, request: generator_pb2.GenerateRequest, context: grpc.aio.ServicerContext):
        yield await self.Generate(request, context)
