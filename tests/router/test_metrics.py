"""Scorer metrics on cases worked out by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest

from tierlm.router.learn.cascade_eval import CascadeData, TierOutcomes
from tierlm.router.learn.quality import auroc, brier, ece, score_metrics, tier_score_metrics

CORRECT = np.array([True, False, True, False])
SCORE = np.array([0.9, 0.8, 0.3, 0.1])


def test_auroc_counts_ordered_pairs() -> None:
    # Right answers {0.9, 0.3} vs wrong {0.8, 0.1}: 3 of the 4 pairs are ordered.
    assert auroc(CORRECT, SCORE) == pytest.approx(0.75)
    assert auroc(CORRECT, np.array([1.0, 0.0, 1.0, 0.0])) == 1.0
    assert math.isnan(auroc(np.ones(3, bool), np.array([0.1, 0.5, 0.9])))


def test_brier() -> None:
    assert brier(CORRECT, SCORE) == pytest.approx((0.01 + 0.64 + 0.49 + 0.01) / 4)


def test_ece_equal_width_bins() -> None:
    # Ten bins: every score alone in its bin, gaps 0.1, 0.8, 0.7, 0.1.
    assert ece(CORRECT, SCORE) == pytest.approx(1.7 / 4)
    # Two bins: [0, 0.5) holds 0.3 (right) and 0.1 (wrong): |0.5 - 0.2|; [0.5, 1] holds
    # 0.9 (right) and 0.8 (wrong): |0.5 - 0.85|; each bin weighs one half.
    assert ece(CORRECT, SCORE, n_bins=2) == pytest.approx(0.5 * 0.3 + 0.5 * 0.35)
    # A score of exactly 1.0 falls in the last bin; calibrated predictions give 0.
    assert ece(np.array([True, True]), np.array([1.0, 1.0])) == 0.0
    assert ece(np.array([True, False]), np.array([0.5, 0.5])) == 0.0


def test_input_checks() -> None:
    with pytest.raises(ValueError, match="probabilities"):
        ece(CORRECT, SCORE + 0.5)
    with pytest.raises(ValueError, match="one length"):
        brier(CORRECT, SCORE[:2])
    with pytest.raises(ValueError, match="n_bins"):
        ece(CORRECT, SCORE, n_bins=0)


def test_per_tier_report() -> None:
    data = CascadeData({"edge": TierOutcomes(CORRECT, SCORE, np.ones(4))})
    report = tier_score_metrics(data)
    assert report["edge"] == score_metrics(CORRECT, SCORE)
    assert report["edge"].accuracy == 0.5 and report["edge"].n == 4
