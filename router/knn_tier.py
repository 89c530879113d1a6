"""knn-vote as a tier (``model: knn-vote``): the 8 nearest labelled neighbours vote, no LLM."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np

from tierlm.router.datasets import LABELS, Example
from tierlm.router.embedding_tier import EmbeddingTier
from tierlm.router.features import TextEncoder
from tierlm.router.knn import KnnVote


class KnnGenerator(EmbeddingTier):
    """Label-choice answers by neighbour vote; a pool row equal to the query never votes."""

    model_name = "knn-vote"

    def __init__(
        self, encoder: TextEncoder, pool: Sequence[Example], k: int = 8, tier_name: str = "knn", labels: Sequence[str] = LABELS
    ):
        super().__init__(encoder, pool, tier_name, labels)
        self.knn = KnnVote(self.pool_embeddings, [e.label for e in pool], k=k, labels=self.labels)

    def label_logprobs(self, query_embedding: np.ndarray, own_row: int | None) -> Mapping[str, float]:
        (vote,) = self.knn.predict(query_embedding[None, :], exclude=[own_row])
        # Smoothed vote shares as the answer's "log-probabilities", so confidence signals exist.
        total = self.knn.k + 0.5 * len(self.labels)
        return {label: math.log((vote.votes.get(label, 0) + 0.5) / total) for label in self.labels}
