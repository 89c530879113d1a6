"""Accuracy of tiers without an LLM on HEADLINES dev (all rows and the first 300).

    python bench/no_llm_tiers.py --threads 1

``knn-vote``: majority of the 8 nearest train rows by MiniLM cosine. ``minilm-probe``:
multinomial logistic regression on the MiniLM embedding, C chosen by 5-fold cross-validation
on train (never on dev).

Embeddings are cached on disk (see tierlm.router.embeddings.default_cache_path), so only the
first run pays for encoding the 7,500 rows.
"""

from __future__ import annotations

from pathlib import Path

import argparse
import time

import numpy as np
from tierlm.results import write_results
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import cross_val_score
from tierlm.router.workload import load_workload

HEADLINES = Path(__file__).resolve().parents[1] / "data" / "workloads" / "headlines"
LABELS = ("up", "down", "neutral", "none")  # the workload's choices, in its order
from tierlm.router.embeddings import EmbeddingCache, Encoder, default_cache_path
from tierlm.router.nollm.knn import KnnVote


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--k", type=int, default=8)
    args = parser.parse_args()

    encoder = Encoder(threads=args.threads, cache=EmbeddingCache(default_cache_path()))
    train, dev = list(load_workload(HEADLINES / "train.jsonl")), list(load_workload(HEADLINES / "dev.jsonl"))
    started = time.perf_counter()
    train_x = encoder.encode([e.query for e in train])
    dev_x = encoder.encode([e.query for e in dev])
    print(f"embedded {len(train) + len(dev)} rows in {time.perf_counter() - started:.1f}s (cache included)")

    knn = KnnVote(train_x, [e.label for e in train], k=args.k, labels=LABELS)
    dev_pred = knn.predict(dev_x)
    dev_ok = np.array([p.label == e.label for p, e in zip(dev_pred, dev)])
    loo_pred = knn.predict(train_x, exclude=list(range(len(train))))
    loo_ok = np.array([p.label == e.label for p, e in zip(loo_pred, train)])

    rows = [
        {"name": "knn-vote", "split": "dev", "n": len(dev), "k": args.k, "accuracy": round(float(dev_ok.mean()), 4)},
        {
            "name": "knn-vote",
            "split": "dev[:300]",
            "n": 300,
            "k": args.k,
            "accuracy": round(float(dev_ok[:300].mean()), 4),
        },
        {
            "name": "knn-vote",
            "split": "train (leave-one-out)",
            "n": len(train),
            "k": args.k,
            "accuracy": round(float(loo_ok.mean()), 4),
        },
        {
            "name": "always-up",
            "split": "dev",
            "n": len(dev),
            "accuracy": round(float(np.mean([e.label == "up" for e in dev])), 4),
        },
    ]
    y_train = [e.label for e in train]
    cv = {
        c: cross_val_score(LogisticRegression(C=c, max_iter=3000), train_x, y_train, cv=5).mean() for c in (1, 10, 100)
    }
    best_c = max(cv, key=cv.get)
    probe = LogisticRegression(C=best_c, max_iter=3000).fit(train_x, y_train)
    probe_ok = probe.predict(dev_x) == np.array([e.label for e in dev])
    for split, ok in (("dev", probe_ok), ("dev[:300]", probe_ok[:300])):
        rows.append(
            {
                "name": "minilm-probe",
                "split": split,
                "n": len(ok),
                "C": best_c,
                "train_cv_accuracy": round(float(cv[best_c]), 4),
                "accuracy": round(float(ok.mean()), 4),
            }
        )
    shares = np.array([p.vote_share for p in dev_pred])
    for low in (0.5, 0.75, 1.0):
        mask = shares >= low
        rows.append(
            {
                "name": f"knn-vote@share>={low}",
                "split": "dev",
                "n": int(mask.sum()),
                "coverage": round(float(mask.mean()), 4),
                "accuracy": round(float(dev_ok[mask].mean()), 4),
            }
        )
    for row in rows:
        print(row)
    print("wrote", write_results("no_llm_tiers", rows))


if __name__ == "__main__":
    main()
