"""Do the static encoder's retrieved demonstrations cost the cloud model accuracy? Train only.

    python bench/static_demonstrations.py [--queries 200]

The static demo's cloud-only accuracy on dev is below MiniLM's (bench/results/demo-static.json,
demo.json), and its demonstrations are the only difference. This asks the same question without
touching dev: HEADLINES train is split (seeded) into a 4,000-row pool and 1,000 held-out rows;
the static encoder is fitted to that pool alone. ``--queries`` held-out rows are answered by
gemma-3-270m (the demo's cloud model, through the edge engine, one thread pair) with the cloud
tier's prompt strategy from examples/demo-static/policy.yaml, its 8 demonstrations retrieved:

* ``static``: the query and the pool embedded by the static encoder (what `encoder: static` serves);
* ``static query, MiniLM pool``: the pool side embedded by MiniLM instead;
* ``minilm``: both by MiniLM (what `encoder: minilm` serves).

Also per retrieval, over all held-out rows: the share of MiniLM's 8 demonstrations it retrieves
and the 8-neighbour vote's accuracy. Writes bench/results/static_demonstrations.json.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tierlm.config import load_policy  # noqa: E402
from tierlm.edge import catalog  # noqa: E402
from tierlm.edge.server import load_generator  # noqa: E402
from tierlm.results import write_results  # noqa: E402
from tierlm.router.embeddings import offline_encoder  # noqa: E402
from tierlm.router.prompting import PromptBuilder  # noqa: E402
from tierlm.router.static_encoder import StaticEncoder  # noqa: E402
from tierlm.router.workload import load_workload  # noqa: E402
from tierlm.v1 import generator_pb2  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
POLICY = REPO / "examples" / "demo-static" / "policy.yaml"
TRAIN = REPO / "data" / "workloads" / "headlines" / "train.jsonl"
POOL_ROWS = 4000
MODEL = "gemma-3-270m"


def nearest(similarity: np.ndarray, k: int) -> np.ndarray:
    return np.argsort(-similarity, axis=1, kind="stable")[:, :k]


async def answer_each(prompts_by_retrieval: dict[str, list[str]], choices: list[str], threads: int) -> dict[str, tuple[list[str], float]]:
    """Each retrieval's answers from the model (one engine, one event loop) and the seconds they took."""
    generator = load_generator(catalog.prepare(MODEL), "cloud", threads=threads, max_batch=8,
                               max_queue=max(len(p) for p in prompts_by_retrieval.values()))

    async def one(prompt: str) -> str:
        request = generator_pb2.GenerateRequest(prompt=prompt, max_tokens=1, choices=choices)
        return (await generator.generate(request)).text.strip()

    answers = {}
    try:
        for name, prompts in prompts_by_retrieval.items():
            started = time.perf_counter()
            answers[name] = (list(await asyncio.gather(*(one(p) for p in prompts))), time.perf_counter() - started)
            print(f"{name}: answered in {answers[name][1]:.0f} s", flush=True)
    finally:
        await generator.engine.aclose(drain=False)
    return answers


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--queries", type=int, default=200, help="held-out train rows the model answers")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()

    strategy = load_policy(POLICY).tier("cloud").prompt
    rows = list(load_workload(TRAIN))
    order = np.random.default_rng(0).permutation(len(rows))
    pool, held_out = [rows[i] for i in order[:POOL_ROWS]], [rows[i] for i in order[POOL_ROWS:]]
    pool_texts, held_texts = [r.query for r in pool], [r.query for r in held_out]
    static = StaticEncoder.for_pool(pool_texts)
    minilm = offline_encoder()
    with minilm.caching():
        minilm_pool, minilm_held = minilm.encode(pool_texts), minilm.encode(held_texts)
    static_pool, static_held = static.encode(pool_texts), static.encode(held_texts)
    retrievals = {  # (pool side, query side)
        "static": (static_pool, static_held),
        "static query, MiniLM pool": (minilm_pool, static_held),
        "minilm": (minilm_pool, minilm_held),
    }
    k = strategy.k
    reference = nearest(minilm_held @ minilm_pool.T, k)
    labels = np.array([r.label for r in pool])
    gold = np.array([r.label for r in held_out])
    prompts = {}
    for name, (pool_side, query_side) in retrievals.items():
        builder = PromptBuilder(strategy, pool, pool_embeddings=pool_side)
        prompts[name] = [builder.build_prompt(text, query_embedding=query_side[i]) for i, text in enumerate(held_texts[: args.queries])]
    answers = asyncio.run(answer_each(prompts, list(strategy.label_continuations), args.threads))
    result_rows = []
    for name, (pool_side, query_side) in retrievals.items():
        top = nearest(query_side @ pool_side.T, k)
        result_rows.append({
            "retrieval": name,
            "queries": len(prompts[name]),
            "accuracy": round(float(np.mean([a == g for a, g in zip(answers[name][0], gold)])), 4),
            "held_out": len(held_out),
            "minilm_demonstrations_retrieved": round(float(np.mean([len(set(a) & set(b)) / k for a, b in zip(top, reference)])), 4),
            "knn_vote_accuracy": round(float(np.mean([Counter(labels[t]).most_common(1)[0][0] == g for t, g in zip(top, gold)])), 4),
            "answer_s": round(answers[name][1], 1),
        })
    path = write_results(
        "static_demonstrations", result_rows, model=MODEL, pool_rows=POOL_ROWS, seed=0,
        measures=("HEADLINES train only: a seeded 4,000-row pool (the static encoder fitted to it) and held-out train rows; "
                  f"{MODEL} through the edge engine with the demo cloud tier's prompt strategy and {k} retrieved demonstrations"),
    )
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
