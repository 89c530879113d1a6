"""``knn-vote``: answer a query with the majority label of its nearest labelled neighbours.

No LLM at all: the cost is one MiniLM embedding and a dot product against the pool. On
HEADLINES this is both the honest baseline every routing table carries and a legitimate
near-zero-cost first tier (FrugalGPT's "LLM approximation", a semantic cache).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True, slots=True)
class KnnPrediction:
    """One knn-vote answer and how sure the vote was.

    Attributes:
        label: the winning label.
        votes: neighbours per label, over every label of the pool (zeros included).
        vote_share: the winner's votes / k, in (0, 1].
        margin: (winner's votes - runner-up's votes) / k, in [0, 1]; 0 on a tie.
        neighbours: pool indices of the k neighbours, nearest first.
    """

    label: str
    votes: dict[str, int]
    vote_share: float
    margin: float
    neighbours: tuple[int, ...]


class KnnVote:
    """Majority vote of the ``k`` most cosine-similar pool rows.

    Ties between labels with the most votes go to the label whose voters have the larger
    summed similarity (then to the label listed first in ``labels``).

    Args:
        pool_embeddings: unit-norm embeddings, one row per labelled pool example.
        pool_labels: the label of each pool row.
        k: neighbours per vote.
        labels: the label set, fixing the order of ``votes``; defaults to the pool's labels sorted.
    """

    def __init__(
        self,
        pool_embeddings: np.ndarray,
        pool_labels: Sequence[str],
        *,
        k: int = 8,
        labels: Sequence[str] | None = None,
    ) -> None:
        if len(pool_embeddings) != len(pool_labels):
            raise ValueError(f"{len(pool_embeddings)} embeddings for {len(pool_labels)} labels")
        if not 1 <= k < len(pool_labels):
            raise ValueError(f"k={k} must be in [1, pool size - 1 = {len(pool_labels) - 1}]")
        self.labels = tuple(labels) if labels is not None else tuple(sorted(set(pool_labels)))
        unknown = set(pool_labels) - set(self.labels)
        if unknown:
            raise ValueError(f"pool labels {sorted(unknown)} not in {self.labels}")
        self.k = k
        self._pool = np.asarray(pool_embeddings, dtype=np.float32)
        index = {label: i for i, label in enumerate(self.labels)}
        self._pool_label_ids = np.array([index[label] for label in pool_labels], dtype=np.int64)

    def predict(
        self,
        query_embeddings: np.ndarray,
        exclude: Sequence[int | None] | None = None,
        *,
        chunk: int = 512,
    ) -> list[KnnPrediction]:
        """Vote for each query row.

        Args:
            query_embeddings: unit-norm embeddings, shape (n, dim).
            exclude: per query, a pool index that may not vote (the query's own row when the
                queries come from the pool: leave-one-out), or ``None``.
            chunk: queries per similarity block, bounding memory at chunk x pool floats.
        """
        queries = np.atleast_2d(np.asarray(query_embeddings, dtype=np.float32))
        if exclude is not None and len(exclude) != len(queries):
            raise ValueError(f"{len(exclude)} exclusions for {len(queries)} queries")
        out: list[KnnPrediction] = []
        skips = list(exclude) if exclude is not None else [None] * len(queries)
        for start in range(0, len(queries), chunk):
            similarity = queries[start : start + chunk] @ self._pool.T
            out += [self.vote(row, skip) for row, skip in zip(similarity, skips[start : start + chunk])]
        return out

    def vote(self, similarity: np.ndarray, exclude: int | None = None) -> KnnPrediction:
        """The vote of one query whose similarity to every pool row is ``similarity`` (computed
        elsewhere, e.g. batched with other work); ``exclude`` as in :meth:`predict`."""
        if exclude is not None:
            similarity = similarity.copy()
            similarity[exclude] = -np.inf
        k = self.k
        top = np.argpartition(-similarity, k - 1)[:k]
        top = top[np.lexsort((top, -similarity[top]))]  # nearest first; index breaks exact ties
        label_ids = self._pool_label_ids[top]
        n_labels = len(self.labels)
        counts = np.bincount(label_ids, minlength=n_labels)
        mass = np.bincount(label_ids, weights=similarity[top], minlength=n_labels)
        # lexsort's last key is primary: most votes, then most similarity, then label order.
        ranking = np.lexsort((np.arange(n_labels), -mass, -counts))
        winner = int(ranking[0])
        second = int(counts[ranking[1]]) if n_labels > 1 else 0
        return KnnPrediction(
            label=self.labels[winner],
            votes={label: int(c) for label, c in zip(self.labels, counts)},
            vote_share=float(counts[winner]) / k,
            margin=float(counts[winner] - second) / k,
            neighbours=tuple(int(i) for i in top),
        )
