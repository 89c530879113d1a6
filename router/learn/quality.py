"""How good a scorer's P(correct) is: ranking (AUROC), accuracy of the probabilities (Brier
score) and calibration (expected calibration error).

All functions take ``correct`` (bool[n], the answer was right) and ``score`` (float[n] in
[0, 1], the predicted probability that it is right).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from tierlm.router.learn.cascade_eval import CascadeData

__all__ = ["ScoreMetrics", "auroc", "brier", "ece", "score_metrics", "tier_score_metrics"]


def _check(correct: np.ndarray, score: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    correct = np.asarray(correct).astype(bool)
    score = np.asarray(score, dtype=np.float64)
    if correct.ndim != 1 or correct.shape != score.shape or correct.size == 0:
        raise ValueError("correct and score must be non-empty 1-D arrays of one length")
    if not ((score >= 0) & (score <= 1)).all():
        raise ValueError("score must be probabilities in [0, 1]")
    return correct, score


def auroc(correct: np.ndarray, score: np.ndarray) -> float:
    """Area under the ROC curve of ``score`` for telling right answers from wrong ones.

    NaN when only one class occurs (a tier that is always right or always wrong): the area is
    undefined there, and NaN says so instead of a misleading 0.5.
    """
    from sklearn.metrics import roc_auc_score

    correct, score = _check(correct, score)
    if correct.all() or not correct.any():
        return float("nan")
    return float(roc_auc_score(correct, score))


def brier(correct: np.ndarray, score: np.ndarray) -> float:
    """Mean squared difference between ``score`` and the 0/1 outcome (lower is better)."""
    from sklearn.metrics import brier_score_loss

    correct, score = _check(correct, score)
    return float(brier_score_loss(correct, score))


def ece(correct: np.ndarray, score: np.ndarray, n_bins: int = 10) -> float:
    """Expected calibration error with ``n_bins`` equal-width bins over [0, 1].

    Bin b holds scores in [b/B, (b+1)/B), the last bin also holds 1.0. ECE is the mean over
    queries of |bin accuracy - bin mean score|, i.e. sum over bins of (n_b / n) times that gap.
    """
    if n_bins < 1:
        raise ValueError("n_bins must be >= 1")
    correct, score = _check(correct, score)
    bins = np.minimum((score * n_bins).astype(np.int64), n_bins - 1)
    count = np.bincount(bins, minlength=n_bins)
    hits = np.bincount(bins, correct.astype(np.float64), minlength=n_bins)
    mass = np.bincount(bins, score, minlength=n_bins)
    filled = count > 0
    gap = np.abs(hits[filled] - mass[filled])  # = n_b * |accuracy_b - confidence_b|
    return float(gap.sum() / correct.size)


@dataclass(frozen=True)
class ScoreMetrics:
    """A scorer's quality on one tier's answers."""

    n: int
    accuracy: float  # share of answers that were right (the base rate)
    auroc: float
    brier: float
    ece: float


def score_metrics(correct: np.ndarray, score: np.ndarray, n_bins: int = 10) -> ScoreMetrics:
    """All metrics of this module for one tier."""
    correct, score = _check(correct, score)
    return ScoreMetrics(
        n=int(correct.size),
        accuracy=float(correct.mean()),
        auroc=auroc(correct, score),
        brier=brier(correct, score),
        ece=ece(correct, score, n_bins),
    )


def tier_score_metrics(data: CascadeData, n_bins: int = 10) -> dict[str, ScoreMetrics]:
    """:func:`score_metrics` for every tier of a split."""
    return {name: score_metrics(t.correct, t.score, n_bins) for name, t in data.tiers.items()}
