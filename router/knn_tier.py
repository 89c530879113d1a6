"""knn-vote as a tier: a Generator that answers label-choice requests with no LLM at all.

The cheapest tier FrugalGPT calls "LLM approximation": embed the query with MiniLM, let its
8 nearest labelled neighbours vote. It speaks the same contract as every tier, so collection,
the cascade and the router use it unchanged (`model: knn-vote` in the policy).
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Sequence

import grpc
import numpy as np

from tierlm.errors import GenerationError
from tierlm.router.datasets import LABELS, Example
from tierlm.router.knn import KnnVote
from tierlm.v1 import generator_pb2, generator_pb2_grpc

MODEL_NAME = "knn-vote"


def last_query(prompt: str) -> str:
    """The query of a "... Q: <query>\\nA:" prompt (the last block), or the whole prompt."""
    tail = prompt.rsplit("Q: ", 1)[-1]
    return tail[: -len("\nA:")] if tail.endswith("\nA:") else tail


class KnnGenerator(generator_pb2_grpc.GeneratorServicer):
    """Label-choice answers by neighbour vote; a pool row equal to the query never votes."""

    def __init__(
        self, encoder, pool: Sequence[Example], k: int = 8, tier_name: str = "knn", labels: Sequence[str] = LABELS
    ):
        self.encoder = encoder
        self.tier_name = tier_name
        self._pool_index = {" ".join(e.headline.casefold().split()): i for i, e in enumerate(pool)}
        self.knn = KnnVote(encoder.encode([e.headline for e in pool]), [e.label for e in pool], k=k, labels=labels)

    def answer(self, request: generator_pb2.GenerateRequest) -> generator_pb2.GenerateResponse:
        started = time.perf_counter()
        labels = [c.strip() for c in request.choices]
        if not labels or set(labels) - set(self.knn.labels):
            raise GenerationError(
                grpc.StatusCode.INVALID_ARGUMENT, f"knn-vote answers label choices among {list(self.knn.labels)}"
            )
        query = last_query(request.prompt)
        own_row = self._pool_index.get(" ".join(query.casefold().split()))
        (vote,) = self.knn.predict(self.encoder.encode([query]), exclude=[own_row])
        # Smoothed vote shares as the answer's "log-probabilities", so confidence signals exist.
        total = self.knn.k + 0.5 * len(labels)
        scores = {c: math.log((vote.votes.get(c.strip(), 0) + 0.5) / total) for c in request.choices}
        best = max(scores, key=scores.get)
        latency_ms = (time.perf_counter() - started) * 1e3
        return generator_pb2.GenerateResponse(
            request_id=request.request_id, text=best,
            choice_logprobs=[generator_pb2.ChoiceLogprob(choice=c, logprob=v, num_tokens=1) for c, v in scores.items()],
            usage=generator_pb2.Usage(prompt_tokens=len(query.split()), completion_tokens=1),
            finish_reason=generator_pb2.FINISH_REASON_CHOICE, latency_ms=latency_ms, ttft_ms=latency_ms,
            model=MODEL_NAME, tier=self.tier_name, is_final=True,
        )

    async def generate(self, request: generator_pb2.GenerateRequest) -> generator_pb2.GenerateResponse:
        return await asyncio.to_thread(self.answer, request)

    async def Generate(self, request: generator_pb2.GenerateRequest, context: grpc.aio.ServicerContext):
        try:
            return await self.generate(request)
        except GenerationError as exc:
            await context.abort(exc.code, str(exc))

    async def GenerateStream(self, request: generator_pb2.GenerateRequest, context: grpc.aio.ServicerContext):
        yield await self.Generate(request, context)
