"""The answer scorer: it learns a signal it is given, and a saved scorer scores exactly as before."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score
from tierlm.router.learn.records import AnswerRecord, read_records, write_records
from tierlm.router.learn.scorer import Scorer, train

from tests.support.workloads import LABELS

TOPICS = ["futures", "rally", "demand", "jewellery", "imports", "mining", "reserves", "ounce"]


def synthetic_records(n_queries: int, seed: int) -> list[AnswerRecord]:
    """Two tiers answer every query. Whether an answer is right depends on signals a scorer can
    see: the 'small' tier is right when its label margin is high and on 'futures' headlines; the
    'large' tier is right when its mean token log-prob is high. The rest is noise."""
    rng = np.random.default_rng(seed)
    records = []
    for q in range(n_queries):
        topic = TOPICS[rng.integers(len(TOPICS))]
        query = f"gold {topic} headline {rng.integers(1000)}"
        label = LABELS[rng.integers(len(LABELS))]
        # small tier: label-choice scoring
        logits = rng.normal(size=len(LABELS)) * 2.0
        probs = np.exp(logits) / np.exp(logits).sum()
        top2 = np.sort(probs)[::-1][:2]
        p_small = 1 / (1 + math.exp(-(6.0 * (top2[0] - top2[1]) - 1.5 + (2.0 if topic == "futures" else 0.0))))
        small_right = rng.random() < p_small
        records.append(
            AnswerRecord(
                query=query,
                answer=label if small_right else LABELS[(LABELS.index(label) + 1) % 4],
                tier="small",
                label_logprobs=dict(zip(LABELS, np.log(probs).tolist())),
                correct=bool(small_right),
                query_id=str(q),
            )
        )
        # large tier: free generation with token log-probs
        mean_lp = -rng.exponential(0.8)
        large_right = rng.random() < 1 / (1 + math.exp(-(3.0 * mean_lp + 2.0)))
        tokens = tuple(min(0.0, mean_lp + rng.normal(scale=0.1)) for _ in range(rng.integers(1, 4)))
        records.append(
            AnswerRecord(
                query=query,
                answer=label if large_right else LABELS[(LABELS.index(label) + 2) % 4],
                tier="large",
                token_logprobs=tokens,
                correct=bool(large_right),
                query_id=str(q),
            )
        )
    return records


def auroc(scorer: Scorer, records: list[AnswerRecord]) -> float:
    y = [r.correct for r in records]
    return roc_auc_score(y, scorer.score_records(records))


@pytest.fixture(scope="module")
def trained(hashing_encoder):
    return train(synthetic_records(500, seed=0), hashing_encoder, split="synthetic-train"), hashing_encoder


def test_learns_the_synthetic_signal_on_held_out_records(trained) -> None:
    scorer, _ = trained
    held_out = synthetic_records(300, seed=1)
    assert auroc(scorer, held_out) > 0.75
    for tier in ("small", "large"):
        assert auroc(scorer, [r for r in held_out if r.tier == tier]) > 0.7


def test_scores_are_probabilities_and_score_matches_batch(trained) -> None:
    scorer, _ = trained
    records = synthetic_records(20, seed=2)
    batch = scorer.score_records(records)
    assert np.all((batch > 0) & (batch < 1))
    one = [scorer.score(r.query, r.answer, r.tier, r.token_logprobs, r.label_logprobs) for r in records]
    np.testing.assert_allclose(one, batch, rtol=1e-12)


def test_save_load_round_trip_gives_identical_scores(trained, tmp_path) -> None:
    scorer, encoder = trained
    scorer.save(tmp_path / "scorer")
    loaded = Scorer.load(tmp_path / "scorer", encoder=encoder)
    records = synthetic_records(50, seed=3)
    assert np.array_equal(scorer.score_records(records), loaded.score_records(records))
    meta = json.loads((tmp_path / "scorer" / "scorer.json").read_text())
    assert meta["tiers"] == ["large", "small"]
    assert meta["training"]["split"] == "synthetic-train"
    assert meta["encoder"] == encoder.model_id
    assert {row["C"] for row in meta["cross_validation"]} and "scikit-learn" in meta["versions"]


def test_load_refuses_another_encoder(trained, tmp_path) -> None:
    scorer, encoder = trained
    scorer.save(tmp_path / "scorer")
    with pytest.raises(ValueError, match="encoder"):
        Scorer.load(tmp_path / "scorer", encoder=type(encoder)(model_id="other"))


def test_unknown_tier_and_unlabelled_records_are_errors(trained) -> None:
    scorer, encoder = trained
    with pytest.raises(ValueError, match="unknown"):
        scorer.score("q", "up", "mystery-tier")
    with pytest.raises(ValueError, match="correct"):
        train([AnswerRecord("q", "up", "small")], encoder)


def test_a_tier_that_is_always_right_gets_a_constant_high_score(hashing_encoder) -> None:
    records = [AnswerRecord(f"q{i}", "up", "oracle", correct=True, query_id=str(i)) for i in range(20)]
    records += [AnswerRecord(f"q{i}", "up", "coin", correct=bool(i % 2), query_id=str(i)) for i in range(20)]
    scorer = train(records, hashing_encoder)
    oracle = scorer.score_records([r for r in records if r.tier == "oracle"])
    assert np.all(oracle > 0.9)


def test_real_minilm_round_trip(minilm, tmp_path) -> None:
    records = synthetic_records(30, seed=4)
    scorer = train(records, minilm, folds=3)
    scorer.save(tmp_path / "s")
    loaded = Scorer.load(tmp_path / "s", encoder=minilm)
    assert np.array_equal(scorer.score_records(records[:6]), loaded.score_records(records[:6]))


def test_records_round_trip_through_json_lines(tmp_path) -> None:
    records = synthetic_records(5, seed=5)
    assert write_records(tmp_path / "r.jsonl", records) == 10
    assert list(read_records(tmp_path / "r.jsonl")) == records
    with pytest.raises(ValueError, match="log-probs"):
        AnswerRecord("q", "a", "t", token_logprobs=(0.5,))


def test_given_query_embedding_scores_like_encoding_it(trained) -> None:
    scorer, encoder = trained
    record = synthetic_records(1, seed=6)[0]
    args = (record.query, record.answer, record.tier, record.token_logprobs, record.label_logprobs)
    given = scorer.score(*args, query_embedding=encoder.encode([record.query])[0])
    assert given == pytest.approx(scorer.score(*args), rel=1e-12)


def test_opposite_signals_per_tier_choose_one_model_per_tier(hashing_encoder) -> None:
    rng = np.random.default_rng(7)
    records = []
    for q in range(300):
        margin = rng.random()
        for tier, right in (("trusting", margin > 0.5), ("contrary", margin < 0.5)):
            probs = np.array([0.5 + margin / 2, 0.5 - margin / 2])
            records.append(
                AnswerRecord(
                    f"query {q}",
                    "up",
                    tier,
                    label_logprobs={"up": math.log(probs[0]), "down": math.log(probs[1])},
                    correct=bool(right),
                    query_id=str(q),
                )
            )
    scorer = train(records, hashing_encoder, folds=3)
    assert scorer.per_tier
    for tier in ("trusting", "contrary"):
        assert scorer.metadata["cross_validation_by_tier"][tier]["auroc"] > 0.95


def noise_records(n_queries: int, seed: int) -> list[AnswerRecord]:
    """Correctness independent of everything the scorer sees: only memorising can 'predict' it."""
    rng = np.random.default_rng(seed)
    return [
        AnswerRecord(
            query=f"gold {rng.choice(TOPICS)} {rng.choice(TOPICS)} headline {q}",
            answer=str(rng.choice(LABELS)),
            tier="small",
            label_logprobs=dict(zip(LABELS, rng.normal(size=len(LABELS)).tolist())),
            correct=bool(rng.random() < 0.5),
            query_id=str(q),
        )
        for q in range(n_queries)
    ]


def test_out_of_fold_scores_are_held_out_not_in_sample(hashing_encoder, tmp_path) -> None:
    """On pure noise a weakly regularised scorer memorises its training rows (in-sample AUROC
    well above 0.5); the out-of-fold scores, each from a model that never saw its row, must not."""
    records = noise_records(200, seed=3)
    scorer = train(records, hashing_encoder, c_grid=(100.0,), folds=5)
    y = [r.correct for r in records]
    in_sample = roc_auc_score(y, scorer.score_records(records))
    oof = scorer.out_of_fold["small"]
    assert set(oof) == {r.query_id for r in records}
    out_of_fold = roc_auc_score(y, [oof[r.query_id] for r in records])
    assert in_sample > 0.75 and out_of_fold < 0.65, (in_sample, out_of_fold)
    scorer.save(tmp_path / "s")
    assert Scorer.load(tmp_path / "s", hashing_encoder).out_of_fold == scorer.out_of_fold  # JSON keeps floats exactly
