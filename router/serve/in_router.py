"""Tiers the router answers itself: no-LLM models (``in_router: true``) over the policy's pool.

A knn-vote or probe tier needs nothing but the query's embedding, which the router computes for
every request anyway (retrieval, the scorer), and for knn-vote the query's similarity to every
pool row, which the router computes in the same batch for retrieval. Run behind a gRPC server
of its own, the tier costs the router a call and the tier's process a request (about 0.6 ms of
CPU on each side here) and encodes the query again; run in the router, it costs one vote on the
event loop. It answers what ``tierlm knn serve`` over the same pool and encoder answers, but for
float rounding: the router's similarities come from a batched product, and a near-tie at the
k-th neighbour may break the other way.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence

from tierlm.config import Policy, TierConfig
from tierlm.errors import GenerationError
from tierlm.router.embeddings import Similarities
from tierlm.router.nollm.base import EmbeddingTier
from tierlm.router.nollm.models import no_llm_tier
from tierlm.router.prompting import Labelled, request_query
from tierlm.router.serve.batcher import EncodeBatcher
from tierlm.router.serve.query import Compare, current_query
from tierlm.router.serve.tiers import TierFailure
from tierlm.v1 import generator_pb2


class InRouterTier:
    """A :class:`~tierlm.router.serve.tiers.Tier` answered in the router's process.

    Args:
        config: the tier's policy entry (``in_router: true``).
        model: the no-LLM model, over the pool whose similarities ``pool_index`` computes.
        pool_index: the pool's similarity index, shared with retrieval: the similarities a
            request's query came with (``current_query``) are read, not recomputed.
        compare: how to embed a query the router did not embed (a request whose text is not
            the routed query's, or a call outside a routed request).
    """

    def __init__(self, config: TierConfig, model: EmbeddingTier, pool_index: Similarities, compare: Compare):
        self.config = config
        self.model = model
        self.pool_index = pool_index
        self._compare = compare

    async def generate(
        self, request: generator_pb2.GenerateRequest, remaining_s: float | None, timeout_s: float | None = None
    ) -> generator_pb2.GenerateResponse:
        """The tier's answer; the deadline does not apply (a vote takes microseconds)."""
        text = request_query(request)
        query = current_query.get()
        similarity = query.similarity(self.pool_index) if query is not None and query.text == text else None
        if similarity is not None:
            embedding = query.embedding()
        else:
            embedding, (similarity,) = await self._compare(text, (self.pool_index,))
        try:
            return self.model.answer(request, embedding, similarity)
        except GenerationError as exc:
            raise TierFailure(self.config.name, exc.code, str(exc)) from None

    async def stream(
        self, request: generator_pb2.GenerateRequest, remaining_s: float | None
    ) -> AsyncIterator[generator_pb2.GenerateResponse]:
        yield await self.generate(request, remaining_s)

    async def close(self) -> None:
        """Nothing to release: the tier holds no connection."""


def in_router_tiers(
    policy: Policy, pool: Sequence[Labelled], pool_index: Similarities | None, batcher: EncodeBatcher | None
) -> dict[str, InRouterTier]:
    """The policy's ``in_router`` tiers by name, learning from ``pool`` (the policy's), whose
    embeddings ``pool_index`` holds, with the router's encoder."""
    if not any(t.in_router for t in policy.tiers):
        return {}
    if pool_index is None or batcher is None:
        raise ValueError("in_router tiers need the policy's pool embedded by the router's encoder")
    tiers: dict[str, InRouterTier] = {}
    for tier in (t for t in policy.tiers if t.in_router):
        model = no_llm_tier(tier, batcher.encoder, pool, pool_embeddings=pool_index.rows)
        if model is None:  # the policy's checks refuse this first (tierlm.config.IN_ROUTER_MODELS)
            raise ValueError(f"tier {tier.name!r}: {tier.model!r} is not a no-LLM model")
        tiers[tier.name] = InRouterTier(tier, model, pool_index, batcher.embed_compared)
    return tiers
