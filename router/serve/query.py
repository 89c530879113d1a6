"""One request's query, embedded at most once and shared by everything that needs the embedding.

Retrieved demonstrations (every tier with a ``retrieved`` prompt) and the learned scorer (every
answer it judges) read the same sentence embedding of the query; computing it once per request
is the difference between one encoder pass and several on the router's hot path.
"""

from __future__ import annotations

import numpy as np

from tierlm.router.embeddings import TextEncoder


class RequestQuery:
    """The query text of one request and, on first use, its embedding."""

    def __init__(self, text: str, encoder: TextEncoder | None = None):
        self.text = text
        self._encoder = encoder
        self._embedding: np.ndarray | None = None

    def embedding(self) -> np.ndarray | None:
        """The query's unit-norm embedding, or None when the router has no encoder."""
        if self._embedding is None and self._encoder is not None:
            self._embedding = self._encoder.encode([self.text])[0]
        return self._embedding
