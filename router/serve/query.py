"""One request's query, embedded at most once and shared by everything that needs the embedding.

Retrieved demonstrations (every tier with a ``retrieved`` prompt) and the learned scorer (every
answer it judges) read the same sentence embedding of the query; computing it once per request
is the difference between one encoder pass and several on the router's hot path. The embedding
is awaited (:meth:`RequestQuery.embedded`), so it is computed off the event loop and batched
with other requests' (:class:`~tierlm.router.serve.batcher.EncodeBatcher`); afterwards every
reader takes it synchronously (:meth:`RequestQuery.embedding`). With ``compare``, the same
batch also gives the query's similarities to the retrieval pools' rows
(:meth:`EncodeBatcher.embed_compared`), which retrieval then reads (:meth:`RequestQuery.similarity`).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from contextvars import ContextVar

import numpy as np

from tierlm.router.embeddings import Similarities

Embed = Callable[[str], Awaitable[np.ndarray]]
"""Text -> its unit-norm embedding, e.g. :meth:`EncodeBatcher.embed`."""
Compare = Callable[[str, Sequence[Similarities]], Awaitable[tuple[np.ndarray, tuple[np.ndarray, ...]]]]
"""Text, pools -> its embedding and its similarities to each pool's rows, e.g. :meth:`EncodeBatcher.embed_compared`."""


class RequestQuery:
    """The query text of one request and, once awaited, its embedding.

    Args:
        text: the query.
        embed: how to embed it; None when the router needs no embeddings.
        exact: how to embed it exactly, when ``embed`` is a faster approximation (the int8
            encoder) and a decision needs the exact embedding (see LearnedScorer).
        compare: instead of ``embed``: how to embed it together with its similarities to ``pools``.
        pools: the retrieval pools whose similarities ``compare`` computes.
    """

    def __init__(self, text: str, embed: Embed | None = None, exact: Embed | None = None, *,
                 compare: Compare | None = None, pools: Sequence[Similarities] = ()):
        self.text = text
        self._embed = embed
        self._exact = exact
        self._compare = compare
        self._pools = tuple(pools)
        self._embedding: np.ndarray | None = None
        self._exact_embedding: np.ndarray | None = None
        self._similarities: dict[int, np.ndarray] = {}
        #: Prompts rendered for this query, by prompt builder: tiers sharing a strategy share one.
        self.prompts: dict[int, str] = {}

    async def embedded(self) -> np.ndarray | None:
        """The query's embedding, computed on the first call; None without an embedder."""
        if self._embedding is None:
            if self._compare is not None:
                self._embedding, rows = await self._compare(self.text, self._pools)
                self._similarities = {id(pool): row for pool, row in zip(self._pools, rows)}
            elif self._embed is not None:
                self._embedding = await self._embed(self.text)
        return self._embedding

    def similarity(self, pool: Similarities | None) -> np.ndarray | None:
        """The query's similarity to each of ``pool``'s rows if they came with its embedding, else None."""
        return self._similarities.get(id(pool)) if pool is not None else None

    async def exactly_embedded(self) -> np.ndarray | None:
        """The exact embedding, if the router has an exact encoder besides the fast one; else the
        one :meth:`embedded` gives."""
        if self._exact is None:
            return await self.embedded()
        if self._exact_embedding is None:
            self._exact_embedding = await self._exact(self.text)
        return self._exact_embedding

    def embedding(self) -> np.ndarray | None:
        """The embedding :meth:`embedded` computed (None without an embedder).

        Raises:
            RuntimeError: if there is an embedder and the embedding was not awaited yet.
        """
        if (self._embed is not None or self._compare is not None) and self._embedding is None:
            raise RuntimeError("the query's embedding is read before it was awaited (RequestQuery.embedded)")
        return self._embedding


current_query: ContextVar[RequestQuery | None] = ContextVar("tierlm_current_query", default=None)
"""The query of the request being routed (set by the cascade once it is embedded), like
``current_tenant``: tiers the router answers itself read its embedding and similarities here
instead of computing them again."""
