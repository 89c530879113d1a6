"""From answers to the optimizer's arrays: the fitted split is scored out of fold."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from tierlm.router.learn.offline import cascade_data, common_queries, fit_scores
from tierlm.router.learn.records import AnswerRecord
from tierlm.router.learn.scorer import Scorer, train

from tests.support.workloads import LABELS


def records(n: int, seed: int) -> list[AnswerRecord]:
    rng = np.random.default_rng(seed)
    out = []
    for q in range(n):
        for tier, skill in (("small", 0.6), ("large", 0.85)):
            right = bool(rng.random() < skill)
            logprobs = dict(zip(LABELS, rng.normal(size=4).tolist()))
            out.append(AnswerRecord(query=f"gold item {q} {rng.integers(50)}", answer="up" if right else "down",
                                    tier=tier, label_logprobs=logprobs, correct=right, query_id=f"q{q}",
                                    cost=0.1 if tier == "small" else 1.0))
    return out


@pytest.fixture(scope="module")
def fitted(hashing_encoder) -> tuple[Scorer, list[AnswerRecord]]:
    train_records = records(60, seed=0)
    return train(train_records, hashing_encoder, split="train", c_grid=(1.0,)), train_records


def test_the_training_split_gets_out_of_fold_scores_other_splits_the_scorer(fitted) -> None:
    scorer, train_records = fitted
    table = fit_scores(scorer, "train")
    assert table is scorer.out_of_fold and fit_scores(scorer, "dev") is None
    data = cascade_data(train_records, scorer, scores=table)
    ids = common_queries(train_records)
    by_key = {(r.tier, r.query_id): r for r in train_records}
    for tier in ("small", "large"):
        assert np.array_equal(data.tiers[tier].score, [table[tier][qid] for qid in ids])
        in_sample = scorer.score_records([by_key[(tier, qid)] for qid in ids])
        assert not np.allclose(data.tiers[tier].score, in_sample)  # the point: not the in-sample scores
        assert np.allclose(cascade_data(train_records, scorer).tiers[tier].score, in_sample)


def test_missing_out_of_fold_scores_are_errors_not_silent_in_sample_scores(fitted) -> None:
    scorer, train_records = fitted
    more = train_records + [dataclasses.replace(r, query_id="new") for r in train_records[:2]]
    with pytest.raises(ValueError, match="retrain"):
        cascade_data(more, scorer, scores=fit_scores(scorer, "train"))
    bare = Scorer(scorer.encoder, scorer.text_features, scorer.tiers, scorer._models, scorer.metadata)
    with pytest.raises(ValueError, match="out-of-fold"):
        fit_scores(bare, "train")
