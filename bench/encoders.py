"""The router's sentence encoders: CPU per query against what they keep of MiniLM, on HEADLINES dev.

    python bench/encoders.py

Rows: all-MiniLM-L6-v2 through onnxruntime in float32 (the reference: torch's embeddings to
1e-5) and int8 (what the router serves with), and the static encoder
(tierlm/router/static_encoder.py) as distilled and as fitted to the train pool. Per row:

* ``cpu_ms_per_query``: process CPU time per query embedded alone on one thread (500 dev queries
  after 50 of warm-up), as the router embeds under light load; every encoder is timed before any
  of the quality measures run (scikit-learn's fits leave BLAS threads whose spinning counts as
  the process's CPU time);
* ``cosine_to_minilm_mean`` / ``_min``: each dev query's embedding against the float32 MiniLM one;
* ``retrieval_top8_overlap``: the share of the 8 train rows retrieved for a dev query (the
  demo's demonstrations) that MiniLM retrieves too;
* ``knn_vote_accuracy``: the knn-vote tier (8 nearest train rows) on dev;
* ``probe_accuracy``: logistic regression on the embedding (C by 5-fold cross-validation on
  train), a stand-in for what the learned scorer can read from the embedding.

Everything that is fitted (the static table, the probe) sees train only; dev is only reported.
Writes bench/results/encoders.json.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tierlm.results import write_results  # noqa: E402
from tierlm.router.nollm.knn import KnnVote  # noqa: E402
from tierlm.router.onnx_encoder import OnnxEncoder  # noqa: E402
from tierlm.router.static_encoder import StaticEncoder, distilled_table  # noqa: E402
from tierlm.router.workload import load_workload  # noqa: E402

HEADLINES = Path(__file__).resolve().parents[1] / "data" / "workloads" / "headlines"
K = 8
TIMED, WARMUP = 500, 50


def cpu_ms_per_query(encoder, queries: list[str], timed: int = TIMED, warmup: int = WARMUP) -> float:
    """Process CPU ms per query of ``queries[:timed]`` embedded one at a time, after ``warmup``."""
    for text in queries[:warmup]:
        encoder.encode([text])
    started = time.process_time()
    for text in queries[:timed]:
        encoder.encode([text])
    return round((time.process_time() - started) / timed * 1e3, 3)


def top_k(queries: np.ndarray, pool: np.ndarray) -> np.ndarray:
    similarity = queries @ pool.T
    return np.argsort(-similarity, axis=1, kind="stable")[:, :K]


def probe_accuracy(train_x: np.ndarray, train_y: list[str], dev_x: np.ndarray, dev_y: list[str]) -> tuple[float, float]:
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import cross_val_score

    grid = (0.1, 1.0, 10.0, 100.0)
    scores = [cross_val_score(LogisticRegression(C=c, max_iter=2000), train_x, train_y, cv=5).mean() for c in grid]
    best = grid[int(np.argmax(scores))]
    model = LogisticRegression(C=best, max_iter=2000).fit(train_x, train_y)
    return round(float(model.score(dev_x, dev_y)), 4), best


def main() -> None:
    train, dev = list(load_workload(HEADLINES / "train.jsonl")), list(load_workload(HEADLINES / "dev.jsonl"))
    train_text, dev_text = [r.query for r in train], [r.query for r in dev]
    train_y, dev_y = [r.label for r in train], [r.label for r in dev]
    encoders = {
        "minilm-float32": OnnxEncoder(precision="float32", threads=1),
        "minilm-int8": OnnxEncoder(precision="int8", threads=1),
        "static-distilled": StaticEncoder(distilled_table(), "static-distilled"),
        "static-fitted": StaticEncoder.for_pool(train_text),
    }
    cpu_ms = {name: cpu_ms_per_query(encoder, dev_text) for name, encoder in encoders.items()}
    reference_dev = encoders["minilm-float32"].encode(dev_text)
    reference_top = top_k(reference_dev, encoders["minilm-float32"].encode(train_text))
    rows = []
    for name, encoder in encoders.items():
        train_x, dev_x = encoder.encode(train_text), encoder.encode(dev_text)
        cosine = np.sum(dev_x * reference_dev, axis=1)
        retrieved = top_k(dev_x, train_x)
        knn = KnnVote(train_x, train_y, k=K).predict(dev_x)
        probe, c = probe_accuracy(train_x, train_y, dev_x, dev_y)
        rows.append({
            "encoder": name,
            "cpu_ms_per_query": cpu_ms[name],
            "cosine_to_minilm_mean": round(float(cosine.mean()), 4),
            "cosine_to_minilm_min": round(float(cosine.min()), 4),
            "retrieval_top8_overlap": round(float(np.mean([len(set(a) & set(b)) / K for a, b in zip(retrieved, reference_top)])), 4),
            "knn_vote_accuracy": round(float(np.mean([p.label == y for p, y in zip(knn, dev_y)])), 4),
            "probe_accuracy": probe,
            "probe_c": c,
        })
        print(rows[-1], flush=True)
    path = write_results(
        "encoders", rows,
        measures=f"HEADLINES dev ({len(dev)} rows) against the train pool ({len(train)} rows); one thread; "
                 "CPU ms per query embedded alone; cosine and top-8 overlap against MiniLM float32",
    )
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
