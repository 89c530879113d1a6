"""From collected answers to the optimizer's arrays: align tiers on queries, score every answer,
and the query-only pre-router that predicts which tiers will fail."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from tierlm.router.learn.cascade_eval import CascadeData, TierOutcomes
from tierlm.router.learn.records import AnswerRecord
from tierlm.router.learn.scorer import Scorer, ScoreTable

FailProbs = Mapping[str, Mapping[str, float]]  # tier -> query id -> P(tier answers wrongly)


def _by_tier(records: Sequence[AnswerRecord]) -> dict[str, dict[str, AnswerRecord]]:
    by_tier: dict[str, dict[str, AnswerRecord]] = {}
    for record in records:
        by_tier.setdefault(record.tier, {})[record.query_id] = record
    if not by_tier:
        raise ValueError("no answers")
    return by_tier


def common_queries(records: Sequence[AnswerRecord]) -> list[str]:
    """Ids of the queries every tier answered, sorted."""
    return sorted(set.intersection(*(set(answers) for answers in _by_tier(records).values())))


def fit_scores(scorer: Scorer, split: str) -> ScoreTable | None:
    """The scores a cascade fitted on `split` must use: the scorer's out-of-fold scores if it
    was trained on `split` (in-sample scores would fit over-confident thresholds), else None
    (the scorer never saw `split`, so its own scores are held-out already).

    Raises:
        ValueError: the scorer was trained on `split` but kept no out-of-fold scores.
    """
    if scorer.metadata.get("training", {}).get("split") != split:
        return None
    if not scorer.out_of_fold:
        raise ValueError(f"the scorer was trained on {split!r} without out-of-fold scores: retrain it "
                         f"(`tierlm router train`) or fit the cascade on another split")
    return scorer.out_of_fold


def cascade_data(
    records: Sequence[AnswerRecord],
    scorer: Scorer,
    fail_prob: FailProbs | None = None,
    scores: ScoreTable | None = None,
) -> CascadeData:
    """Per tier, correctness, the scorer's P(correct), cost and (optionally) the pre-router's
    P(fail), on the queries every tier answered, in `common_queries` order.

    `scores`, if given (e.g. :func:`fit_scores`), replaces the scorer's output: per tier and
    query id, every aligned record must have one."""
    by_tier = _by_tier(records)
    ids = common_queries(records)
    outcomes = {}
    for tier, answers in by_tier.items():
        aligned = [answers[qid] for qid in ids]
        if scores is None:
            tier_scores = scorer.score_records(aligned)
        else:
            table = scores.get(tier, {})
            missing = [qid for qid in ids if qid not in table]
            if missing:
                raise ValueError(f"no given score for tier {tier!r} on {len(missing)} queries "
                                 f"(e.g. {missing[0]!r}): the scorer was trained on fewer answers; retrain it")
            tier_scores = np.array([table[qid] for qid in ids])
        outcomes[tier] = TierOutcomes(
            correct=np.array([bool(r.correct) for r in aligned]),
            score=tier_scores,
            cost=np.array([r.cost for r in aligned]),
            fail_prob=None if fail_prob is None else np.array([fail_prob[tier][qid] for qid in ids]),
        )
    return CascadeData(outcomes)


def prerouter_fail_probs(
    train: Sequence[AnswerRecord],
    evaluate: Sequence[AnswerRecord],
    embed: Mapping[str, np.ndarray],
    folds: int = 5,
) -> tuple[FailProbs, FailProbs]:
    """RouteLLM-style pre-routing: per tier, a logistic regression on the query's embedding alone
    predicting that the tier will answer wrongly, before calling anything.

    `embed` maps query text to its embedding. The training split's probabilities are
    out-of-fold (cross_val_predict), so the optimizer never fits thresholds on in-sample
    predictions; the evaluated split's come from a model fitted on all of train."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import cross_val_predict

    train_fail: dict[str, dict[str, float]] = {}
    eval_fail: dict[str, dict[str, float]] = {}
    test_by_tier = _by_tier(evaluate)
    for tier, answers in _by_tier(train).items():
        rows = list(answers.values())
        x = np.stack([embed[r.query] for r in rows])
        wrong = np.array([not r.correct for r in rows], dtype=int)
        tests = list(test_by_tier.get(tier, {}).values())
        if np.bincount(wrong, minlength=2).min() < folds:
            # A tier (nearly) always right or always wrong on train: nothing to learn per query,
            # so every query gets the tier's (smoothed) failure rate.
            rate = (wrong.sum() + 0.5) / (len(wrong) + 1.0)
            train_fail[tier] = {r.query_id: float(rate) for r in rows}
            eval_fail[tier] = {r.query_id: float(rate) for r in tests}
            continue
        model = LogisticRegression(C=1.0, max_iter=2000)
        out_of_fold = cross_val_predict(model, x, wrong, cv=folds, method="predict_proba")[:, 1]
        train_fail[tier] = {r.query_id: float(p) for r, p in zip(rows, out_of_fold)}
        model.fit(x, wrong)
        if tests:
            probs = model.predict_proba(np.stack([embed[r.query] for r in tests]))[:, 1]
            eval_fail[tier] = {r.query_id: float(p) for r, p in zip(tests, probs)}
    return train_fail, eval_fail
