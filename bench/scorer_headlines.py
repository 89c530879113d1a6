"""How well the scorer predicts correctness of real (no-LLM) HEADLINES tiers, on dev.

    python bench/scorer_headlines.py --threads 1

Until the LLM tiers' answers are collected, two real answerers stand in as tiers:
``knn-vote`` (8 nearest train neighbours; label "log-probs" from smoothed vote shares) and
``probe`` (multinomial logistic regression on the MiniLM embedding; label log-probs from its
probabilities). Train-split records come from leave-one-out knn and 5-fold out-of-fold probe
predictions, so they show the tiers' held-out behaviour. For each scorer variant: AUROC, Brier
and ECE per tier on dev, next to the tier's own confidence (top label probability) as a score.
"""

from __future__ import annotations

from pathlib import Path

import argparse
import time

import numpy as np
from tierlm.results import write_results
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import brier_score_loss, roc_auc_score
from sklearn.model_selection import cross_val_predict
from tierlm.router.workload import WorkloadRow, load_workload

HEADLINES = Path(__file__).resolve().parents[1] / "data" / "workloads" / "headlines"
LABELS = ("up", "down", "neutral", "none")  # the workload's choices, in its order
from tierlm.router.embeddings import EmbeddingCache, Encoder, default_cache_path
from tierlm.router.nollm.knn import KnnVote
from tierlm.router.learn.records import AnswerRecord
from tierlm.router.learn.scorer import train


def ece(y: np.ndarray, p: np.ndarray, bins: int = 10) -> float:
    """Expected calibration error over equal-width probability bins."""
    edges = np.minimum((p * bins).astype(int), bins - 1)
    return float(
        sum(
            abs(y[edges == b].mean() - p[edges == b].mean()) * (edges == b).mean()
            for b in range(bins)
            if (edges == b).any()
        )
    )


def tier_records(examples: list[WorkloadRow], label_probs: np.ndarray, tier: str) -> list[AnswerRecord]:
    out = []
    for example, probs in zip(examples, label_probs):
        answer = LABELS[int(np.argmax(probs))]
        out.append(
            AnswerRecord(
                query=example.query,
                answer=answer,
                tier=tier,
                label_logprobs=dict(zip(LABELS, np.log(probs).tolist())),
                correct=answer == example.label,
                query_id=example.id,
            )
        )
    return out


def knn_probs(knn: KnnVote, x: np.ndarray, exclude=None) -> np.ndarray:
    predictions = knn.predict(x, exclude)
    votes = np.array([[p.votes[label] for label in LABELS] for p in predictions], dtype=float)
    # Smoothed vote shares; a tiny bonus keeps the argmax on knn's own tie-break by similarity.
    probs = (votes + 0.5) / (votes.sum(axis=1, keepdims=True) + 0.5 * len(LABELS))
    probs[np.arange(len(probs)), [LABELS.index(p.label) for p in predictions]] += 1e-6
    return probs / probs.sum(axis=1, keepdims=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--folds", type=int, default=3)
    parser.add_argument("--c-grid", type=float, nargs="+", default=[0.001, 0.003, 0.01])
    args = parser.parse_args()
    encoder = Encoder(threads=args.threads, cache=EmbeddingCache(default_cache_path()))
    train_ex, dev_ex = list(load_workload(HEADLINES / "train.jsonl")), list(load_workload(HEADLINES / "dev.jsonl"))
    train_x = encoder.encode([e.query for e in train_ex])
    dev_x = encoder.encode([e.query for e in dev_ex])
    y_train = np.array([LABELS.index(e.label) for e in train_ex])

    knn = KnnVote(train_x, [e.label for e in train_ex], k=8, labels=LABELS)
    probe = LogisticRegression(C=10.0, max_iter=3000)  # the C bench/no_llm_tiers.py picks by CV on train
    records = {
        "train": tier_records(train_ex, knn_probs(knn, train_x, list(range(len(train_ex)))), "knn-vote")
        + tier_records(train_ex, cross_val_predict(probe, train_x, y_train, cv=5, method="predict_proba"), "probe"),
    }
    probe.fit(train_x, y_train)
    records["dev"] = tier_records(dev_ex, knn_probs(knn, dev_x), "knn-vote") + tier_records(
        dev_ex, probe.predict_proba(dev_x), "probe"
    )
    dev = records["dev"]
    tiers = np.array([r.tier for r in dev])
    y = np.array([r.correct for r in dev], dtype=int)
    query_emb = {"train": np.vstack([train_x, train_x]), "dev": np.vstack([dev_x, dev_x])}

    rows = []
    for tier in ("knn-vote", "probe"):
        m = tiers == tier
        conf = np.array([max(np.exp(list(r.label_logprobs.values()))) for r in np.array(dev)[m]])
        rows.append(
            {
                "name": f"{tier}/own-confidence",
                "tier": tier,
                "accuracy": round(float(y[m].mean()), 4),
                "auroc": round(float(roc_auc_score(y[m], conf)), 4),
                "brier": round(float(brier_score_loss(y[m], conf)), 4),
                "ece": round(ece(y[m], conf), 4),
            }
        )
    for kind in ("separate", "joint"):
        started = time.perf_counter()
        scorer = train(
            records["train"],
            encoder,
            text_features=kind,
            split="headlines-train",
            folds=args.folds,
            c_grid=args.c_grid,
            query_embeddings=query_emb["train"] if kind == "separate" else None,
        )
        fit_s = time.perf_counter() - started
        p = scorer.score_records(dev, query_embeddings=query_emb["dev"] if kind == "separate" else None)
        for tier in ("knn-vote", "probe"):
            m = tiers == tier
            rows.append(
                {
                    "name": f"{tier}/scorer-{kind}",
                    "tier": tier,
                    "per_tier": scorer.per_tier,
                    "C": scorer.metadata["C"],
                    "fit_s": round(fit_s, 1),
                    "auroc": round(float(roc_auc_score(y[m], p[m])), 4),
                    "brier": round(float(brier_score_loss(y[m], p[m])), 4),
                    "ece": round(ece(y[m], p[m]), 4),
                }
            )
        print("cross-validation on train:", scorer.metadata["cross_validation"])
    for row in rows:
        print(row)
    print("wrote", write_results("scorer_headlines", rows))


if __name__ == "__main__":
    main()
