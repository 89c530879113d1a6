"""The MiniLM probe as a tier (``model: minilm-probe``): logistic regression on the query embedding."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from tierlm.router.embeddings import TextEncoder
from tierlm.router.nollm.base import EmbeddingTier
from tierlm.router.nollm.probe import DEFAULT_C, LinearProbe
from tierlm.router.prompting import Labelled


class ProbeGenerator(EmbeddingTier):
    """Label-choice answers with the probe's log-probabilities; a query that is a pool row is
    answered by the fold model that never saw it (see :mod:`tierlm.router.nollm.probe`)."""

    model_name = "minilm-probe"

    def __init__(
        self, encoder: TextEncoder, pool: Sequence[Labelled], tier_name: str = "probe", c: float = DEFAULT_C, folds: int = 5,
        pool_embeddings: np.ndarray | None = None,
    ):
        super().__init__(encoder, pool, tier_name, pool_embeddings)
        self.probe = LinearProbe(self.pool_embeddings, [row.label for row in pool], labels=self.labels, c=c, folds=folds)

    def predict(
        self, query_embedding: np.ndarray, own_row: int | None, similarity: np.ndarray | None = None
    ) -> tuple[str, Mapping[str, float]]:
        (probs,) = self.probe.probabilities(query_embedding[None, :], exclude=[own_row])
        # Floored so a label the probe all but rules out still has a finite log-probability.
        logprobs = dict(zip(self.labels, np.log(np.maximum(probs, 1e-12)).tolist()))
        return max(logprobs, key=logprobs.get), logprobs
