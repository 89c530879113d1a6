"""Batch-1 latency of the router's learned pieces on CPU: encoder, knn-vote, probe, scorer.

    python bench/router_overhead.py --threads 1 [--scorer DIR]

Each row is the p50/p99 over HEADLINES dev headlines (no embedding cache), after a warm-up.
Without ``--scorer`` the scorer is trained here on a small synthetic set (its latency does not
depend on what it learned, only on its feature path); with it, the saved scorer is timed on
every tier it knows, the query embedding given (the router embeds a query once and shares it
between retrieval, the no-LLM tiers and the scorer).
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from tierlm.results import write_results
from tierlm.router.workload import load_workload

HEADLINES = Path(__file__).resolve().parents[1] / "data" / "workloads" / "headlines"
LABELS = ("up", "down", "neutral", "none")  # the workload's choices, in its order
from tierlm.router.embeddings import EmbeddingCache, Encoder, default_cache_path
from tierlm.router.nollm.knn import KnnVote
from tierlm.router.nollm.probe import LinearProbe
from tierlm.router.learn.records import AnswerRecord
from tierlm.router.learn.scorer import Scorer, train


def timed(fn: Callable[[str], object], texts: list[str], warmup: int = 10) -> dict[str, float]:
    for text in texts[:warmup]:
        fn(text)
    samples = []
    for text in texts:
        start = time.perf_counter()
        fn(text)
        samples.append(time.perf_counter() - start)
    ms = np.array(samples) * 1e3
    return {"latency_ms_p50": round(float(np.median(ms)), 3), "latency_ms_p99": round(float(np.percentile(ms, 99)), 3)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("-n", type=int, default=200, help="queries timed per row")
    parser.add_argument("--scorer", type=Path, help="a saved scorer to time on each of its tiers")
    args = parser.parse_args()

    encoder = Encoder(threads=args.threads)
    train_ex, dev_ex = list(load_workload(HEADLINES / "train.jsonl")), list(load_workload(HEADLINES / "dev.jsonl"))
    texts = [e.query for e in dev_ex[: args.n]]
    pool = Encoder(threads=args.threads, cache=EmbeddingCache(default_cache_path())).encode(
        [e.query for e in train_ex]
    )
    knn = KnnVote(pool, [e.label for e in train_ex], k=8, labels=LABELS)
    probe = LinearProbe(pool, [e.label for e in train_ex], labels=LABELS)
    rng = np.random.default_rng(0)
    synthetic = [
        AnswerRecord(
            e.query,
            LABELS[i % 4],
            "edge",
            label_logprobs=dict(zip(LABELS, rng.normal(size=4) - 2)),
            correct=bool(rng.random() < 0.6),
            query_id=e.id,
        )
        for i, e in enumerate(train_ex[:300])
    ]
    scorers = {kind: train(synthetic, encoder, text_features=kind) for kind in ("separate", "joint")}
    label_lp = dict(zip(LABELS, [-0.3, -2.0, -3.0, -2.5]))
    query_vec = {text: vec for text, vec in zip(texts, encoder.encode(texts))}

    rows = [{"name": "encoder", "threads": args.threads, "batch": 1, **timed(lambda t: encoder.encode([t]), texts)}]
    started = time.perf_counter()
    encoder.encode([e.query for e in dev_ex[:1000]])
    rows.append(
        {
            "name": "encoder",
            "threads": args.threads,
            "batch": 64,
            "texts_per_s": round(1000 / (time.perf_counter() - started), 1),
        }
    )
    rows.append(
        {
            "name": "knn-vote",
            "threads": args.threads,
            "batch": 1,
            "includes": "encode + vote",
            **timed(lambda t: knn.predict(encoder.encode([t])), texts),
        }
    )
    rows.append(
        {
            "name": "knn-vote",
            "threads": args.threads,
            "batch": 1,
            "includes": "vote only",
            **timed(lambda t: knn.predict(query_vec[t][None, :]), texts),
        }
    )
    rows.append(
        {
            "name": "minilm-probe",
            "threads": args.threads,
            "batch": 1,
            "includes": "probabilities only",
            **timed(lambda t: probe.probabilities(query_vec[t][None, :]), texts),
        }
    )
    if args.scorer is not None:
        saved = Scorer.load(args.scorer, encoder)
        for tier in saved.tiers:
            rows.append(
                {
                    "name": f"scorer:{tier}",
                    "threads": args.threads,
                    "batch": 1,
                    "scorer": str(args.scorer),
                    "includes": "query embedding given (shared with retrieval / no-LLM tiers)",
                    **timed(lambda t, tier=tier: saved.score(t, "up", tier, (), label_lp, query_embedding=query_vec[t]), texts),
                }
            )
    rows.append(
        {
            "name": "scorer-joint",
            "threads": args.threads,
            "batch": 1,
            "includes": "encode query [SEP] answer",
            **timed(lambda t: scorers["joint"].score(t, "up", "edge", (), label_lp), texts),
        }
    )
    rows.append(
        {
            "name": "scorer-separate",
            "threads": args.threads,
            "batch": 1,
            "includes": "encode query",
            **timed(lambda t: scorers["separate"].score(t, "up", "edge", (), label_lp), texts),
        }
    )
    rows.append(
        {
            "name": "scorer-separate",
            "threads": args.threads,
            "batch": 1,
            "includes": "query embedding given (shared with retrieval / knn-vote)",
            **timed(
                lambda t: scorers["separate"].score(t, "up", "edge", (), label_lp, query_embedding=query_vec[t]), texts
            ),
        }
    )
    for row in rows:
        print(row)
    print("wrote", write_results(f"router_overhead_t{args.threads}", rows))


if __name__ == "__main__":
    main()
