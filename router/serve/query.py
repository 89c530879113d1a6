"""One request's query, embedded at most once and shared by everything that needs the embedding.

Retrieved demonstrations (every tier with a ``retrieved`` prompt) and the learned scorer (every
answer it judges) read the same sentence embedding of the query; computing it once per request
is the difference between one encoder pass and several on the router's hot path. The embedding
is awaited (:meth:`RequestQuery.embedded`), so it is computed off the event loop and batched
with other requests' (:class:`~tierlm.router.serve.batcher.EncodeBatcher`); afterwards every
reader takes it synchronously (:meth:`RequestQuery.embedding`).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import numpy as np

Embed = Callable[[str], Awaitable[np.ndarray]]
"""Text -> its unit-norm embedding, e.g. :meth:`EncodeBatcher.embed`."""


class RequestQuery:
    """The query text of one request and, once awaited, its embedding.

    Args:
        text: the query.
        embed: how to embed it; None when the router needs no embeddings.
        exact: how to embed it exactly, when ``embed`` is a faster approximation (the int8
            encoder) and a decision needs the exact embedding (see LearnedScorer).
    """

    def __init__(self, text: str, embed: Embed | None = None, exact: Embed | None = None):
        self.text = text
        self._embed = embed
        self._exact = exact
        self._embedding: np.ndarray | None = None
        self._exact_embedding: np.ndarray | None = None
        #: Prompts rendered for this query, by prompt builder: tiers sharing a strategy share one.
        self.prompts: dict[int, str] = {}

    async def embedded(self) -> np.ndarray | None:
        """The query's embedding, computed on the first call; None without an embedder."""
        if self._embed is not None and self._embedding is None:
            self._embedding = await self._embed(self.text)
        return self._embedding

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
        if self._embed is not None and self._embedding is None:
            raise RuntimeError("the query's embedding is read before it was awaited (RequestQuery.embedded)")
        return self._embedding
