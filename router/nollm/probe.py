"""``minilm-probe``: multinomial logistic regression on a query's sentence embedding.

No LLM at all, like knn-vote; on HEADLINES it beats both knn-vote and the small LLMs with
retrieved demonstrations (bench/no_llm_tiers.py, bench/results/no_llm_tiers.json). Its cost is
one MiniLM embedding and a labels x 384 product.

Cross-fitted over its own pool: besides the model fitted on every pool row, it keeps one model
per fold (stratified K-fold) fitted without that fold. A query that *is* a pool row is answered
by the model that never saw it, so the answers it gives on its own training split are honest
held-out answers (what a scorer and a cascade optimizer fitted on that split need); any other
query gets the full model. knn-vote's "a pool row never votes for itself" is the same rule.

Prediction is plain numpy (softmax of a linear map); scikit-learn is needed only to fit.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

DEFAULT_C = 10.0
"""Inverse regularisation strength: bench/no_llm_tiers.py picks it by 5-fold CV on HEADLINES
train among 1, 10 and 100 (CV accuracy 0.843 at 10)."""


class LinearProbe:
    """Cross-fitted multinomial logistic regression over unit-norm embeddings.

    Args:
        pool_embeddings: one row per labelled pool example.
        pool_labels: the label of each pool row.
        labels: the label set, fixing the column order of :meth:`probabilities`; defaults to the
            pool's labels sorted. Every label needs at least ``folds`` pool rows.
        c: inverse regularisation strength of the logistic regression.
        folds: models fitted without one fold each, for queries that are pool rows.
        seed: fold assignment seed.
    """

    def __init__(
        self,
        pool_embeddings: np.ndarray,
        pool_labels: Sequence[str],
        *,
        labels: Sequence[str] | None = None,
        c: float = DEFAULT_C,
        folds: int = 5,
        seed: int = 0,
    ) -> None:
        from sklearn.model_selection import StratifiedKFold

        x = np.asarray(pool_embeddings, dtype=np.float64)
        if len(x) != len(pool_labels):
            raise ValueError(f"{len(x)} embeddings for {len(pool_labels)} labels")
        self.labels = tuple(labels) if labels is not None else tuple(sorted(set(pool_labels)))
        index = {label: i for i, label in enumerate(self.labels)}
        unknown = set(pool_labels) - set(index)
        if unknown:
            raise ValueError(f"pool labels {sorted(unknown)} not in {self.labels}")
        y = np.array([index[label] for label in pool_labels])
        counts = np.bincount(y, minlength=len(self.labels))
        if folds < 2 or counts.min() < folds:
            raise ValueError(f"every label needs >= folds >= 2 pool rows; counts {dict(zip(self.labels, counts.tolist()))}, folds {folds}")
        self.c = c
        self._fold_of = np.empty(len(y), dtype=np.int64)
        self._fold_models = []
        for fold, (fit_rows, held_rows) in enumerate(StratifiedKFold(folds, shuffle=True, random_state=seed).split(x, y)):
            self._fold_of[held_rows] = fold
            self._fold_models.append(self._fit(x[fit_rows], y[fit_rows], c))
        self._full_model = self._fit(x, y, c)

    def _fit(self, x: np.ndarray, y: np.ndarray, c: float) -> tuple[np.ndarray, np.ndarray]:
        from sklearn.linear_model import LogisticRegression

        model = LogisticRegression(C=c, max_iter=3000).fit(x, y)
        # Columns in label order (every label is in every fold: stratified, >= folds rows each).
        weights = np.zeros((len(self.labels), x.shape[1]))
        bias = np.zeros(len(self.labels))
        weights[model.classes_] = model.coef_
        bias[model.classes_] = model.intercept_
        return weights, bias

    def probabilities(self, query_embeddings: np.ndarray, exclude: Sequence[int | None] | None = None) -> np.ndarray:
        """P(label) per query, shape (n, len(labels)).

        Args:
            query_embeddings: shape (n, dim).
            exclude: per query, the pool row it is (answered by the model fitted without that
                row's fold), or ``None`` (the model fitted on the whole pool).
        """
        x = np.atleast_2d(np.asarray(query_embeddings, dtype=np.float64))
        exclude = [None] * len(x) if exclude is None else list(exclude)
        if len(exclude) != len(x):
            raise ValueError(f"{len(exclude)} exclusions for {len(x)} queries")
        logits = np.empty((len(x), len(self.labels)))
        for row, own in enumerate(exclude):
            weights, bias = self._full_model if own is None else self._fold_models[self._fold_of[own]]
            logits[row] = weights @ x[row] + bias
        logits -= logits.max(axis=1, keepdims=True)
        probs = np.exp(logits)
        return probs / probs.sum(axis=1, keepdims=True)
