"""knn-vote as a tier (``model: knn-vote``): the 8 nearest labelled neighbours vote, no LLM."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np

from tierlm.router.embeddings import TextEncoder
from tierlm.router.nollm.base import EmbeddingTier
from tierlm.router.nollm.knn import KnnVote
from tierlm.router.prompting import Labelled


class KnnGenerator(EmbeddingTier):
    """Label-choice answers by neighbour vote (:class:`KnnVote`, the same vote and tie-breaks as
    the offline knn-vote reference); a pool row equal to the query never votes."""

    model_name = "knn-vote"

    def __init__(self, encoder: TextEncoder, pool: Sequence[Labelled], k: int = 8, tier_name: str = "knn",
                 pool_embeddings: np.ndarray | None = None):
        super().__init__(encoder, pool, tier_name, pool_embeddings)
        self.knn = KnnVote(self.pool_embeddings, [row.label for row in pool], k=k, labels=self.labels)

    def predict(
        self, query_embedding: np.ndarray, own_row: int | None, similarity: np.ndarray | None = None
    ) -> tuple[str, Mapping[str, float]]:
        if similarity is None:
            (vote,) = self.knn.predict(query_embedding[None, :], exclude=[own_row])
        else:
            vote = self.knn.vote(similarity, exclude=own_row)
        # Smoothed vote shares as the answer's "log-probabilities", so confidence signals exist.
        total = self.knn.k + 0.5 * len(self.labels)
        return vote.label, {label: math.log((vote.votes.get(label, 0) + 0.5) / total) for label in self.labels}
