"""The MiniLM probe as a tier (``model: minilm-probe``): logistic regression on the query embedding."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from tierlm.router.datasets import LABELS, Example
from tierlm.router.embedding_tier import EmbeddingTier
from tierlm.router.features import TextEncoder
from tierlm.router.probe import DEFAULT_C, LinearProbe


class ProbeGenerator(EmbeddingTier):
    """Label-choice answers with the probe's log-probabilities; a query that is a pool row is
    answered by the fold model that never saw it (see :mod:`tierlm.router.probe`)."""

    model_name = "minilm-probe"

    def __init__(
        self,
        encoder: TextEncoder,
        pool: Sequence[Example],
        tier_name: str = "probe",
        labels: Sequence[str] = LABELS,
        c: float = DEFAULT_C,
        folds: int = 5,
    ):
        super().__init__(encoder, pool, tier_name, labels)
        self.probe = LinearProbe(self.pool_embeddings, [e.label for e in pool], labels=self.labels, c=c, folds=folds)

    def label_logprobs(self, query_embedding: np.ndarray, own_row: int | None) -> Mapping[str, float]:
        (probs,) = self.probe.probabilities(query_embedding[None, :], exclude=[own_row])
        # Floored so a label the probe all but rules out still has a finite log-probability.
        return dict(zip(self.labels, np.log(np.maximum(probs, 1e-12)).tolist()))
