"""Label-choice scoring in vLLM's CPU build: one request per choice vs one request in all.

    python bench/vllm_scoring.py [--model gemma-3-270m --model smollm2-135m] [--queries 24] [--quick]

The query: HEADLINES' fixed 8-shot prompt (data/workloads/headlines/prompt_8shot.txt) plus a
dev headline, scored over its labels (`` up``, `` down``, `` neutral``, `` none``: one token
each in both models) and over a set with multi-token labels. Two ways, same engine (prefix
caching on), queries one after another:

- ``per-choice-prompt-logprobs``: what `VLLMTextEngine` did before: one request per choice,
  prompt + choice, ``prompt_logprobs=0`` (vLLM then skips its prefix cache, so every choice
  pays the whole prompt);
- ``choice-tree``: `VLLMTextEngine`'s scoring now: the prompt once, asking for the next-token
  log-probabilities of every choice's first token (``logprob_token_ids``): one request for
  single-token labels; each deeper prefix of a multi-token choice one more request, after the
  prompt's, reading its keys and values from the prefix cache.

Rows: latency p50/p95 per query, engine requests per query, prompt tokens, and whether the two
ways' choice log-probs agree (``max_abs_diff``). Writes bench/results/vllm_scoring.json.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
HEADLINES = ROOT / "data" / "workloads" / "headlines"
LABEL_SETS = {
    "single-token": [" up", " down", " neutral", " none"],
    "multi-token": [" up", " down", " neutral", " none", " no change", " mixed signals"],
}


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def queries(n: int) -> list[str]:
    prompt = (HEADLINES / "prompt_8shot.txt").read_text()
    rows = [json.loads(line) for line in (HEADLINES / "dev.jsonl").read_text().splitlines()[:n]]
    return [f"{prompt}Q: {row['prompt']}\nA:" for row in rows]


async def per_choice_prompt_logprobs(engine, prompt: str, choices: list[str]) -> tuple[list[float], int]:
    """One request per choice with prompt log-probs (the former `VLLMTextEngine` scoring)."""
    from vllm import SamplingParams
    from vllm.sampling_params import RequestOutputKind

    prompt_ids = engine.tokenizer.encode(prompt)
    params = SamplingParams(max_tokens=1, prompt_logprobs=0, output_kind=RequestOutputKind.FINAL_ONLY)

    async def score(i: int, choice: str) -> float:
        ids = engine.tokenizer.encode(choice, add_special_tokens=False)
        final = None
        async with contextlib.aclosing(engine._outputs(prompt_ids + ids, params, f"pc-{time.monotonic_ns()}-{i}")) as outputs:
            async for output in outputs:
                final = output
        entries = final.prompt_logprobs[len(prompt_ids) :]
        return sum(entry[t].logprob for entry, t in zip(entries, ids))

    return list(await asyncio.gather(*(score(i, c) for i, c in enumerate(choices)))), len(choices)


async def choice_tree(engine, prompt: str, choices: list[str]) -> tuple[list[float], int]:
    from tierlm.edge.choices import ChoiceTree
    from tierlm.edge.requests import GenerationRequest

    done = await engine.generate(GenerationRequest(prompt=prompt, choices=choices))
    ids = [engine.tokenizer.encode(c, add_special_tokens=False) for c in choices]
    return [c.logprob for c in done.choices], len(ChoiceTree(ids).branches())


METHODS = {"per-choice-prompt-logprobs": per_choice_prompt_logprobs, "choice-tree": choice_tree}


async def bench_model(model: str, n: int) -> list[dict]:
    from tierlm.cloud.engines.vllm_engine import VLLMTextEngine
    from tierlm.edge import catalog

    started = time.perf_counter()
    engine = VLLMTextEngine(catalog.prepare(model), {"dtype": "float32", "max_model_len": 1024})
    log(f"{model}: vLLM started in {time.perf_counter() - started:.0f} s")
    rows = []
    try:
        texts = queries(n)
        for labels, choices in LABEL_SETS.items():
            scores: dict[str, list[list[float]]] = {}
            for name, method in METHODS.items():
                await method(engine, texts[0], choices)  # warm-up (and the few-shot prefix cached)
                latencies, requests = [], 0
                scores[name] = []
                for text in texts:
                    begin = time.perf_counter()
                    got, requests = await method(engine, text, choices)
                    latencies.append(time.perf_counter() - begin)
                    scores[name].append(got)
                rows.append(
                    {
                        "name": name,
                        "model": model,
                        "labels": labels,
                        "choices": len(choices),
                        "requests_per_query": requests,
                        "prompt_tokens": len(engine.tokenizer.encode(texts[0])),
                        "latency_ms_p50": round(1000 * statistics.median(latencies), 1),
                        "latency_ms_p95": round(1000 * sorted(latencies)[int(0.95 * (len(latencies) - 1))], 1),
                    }
                )
                log(str(rows[-1]))
            diff = max(abs(a - b) for x, y in zip(*scores.values()) for a, b in zip(x, y))
            for row in rows[-len(METHODS) :]:
                row["max_abs_diff"] = round(diff, 5)
            base, tree = rows[-2], rows[-1]
            tree["speedup_vs_per_choice"] = round(base["latency_ms_p50"] / tree["latency_ms_p50"], 2)
    finally:
        await engine.aclose()
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", action="append", help="registered model (repeatable); default: both")
    parser.add_argument("--queries", type=int, default=24, help="dev headlines scored per label set and method")
    parser.add_argument("--quick", action="store_true", help="6 queries")
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT))
    from tierlm.results import write_results

    models = args.model or ["gemma-3-270m", "smollm2-135m"]
    n = 6 if args.quick else args.queries
    load_start = os.getloadavg()
    rows = []
    for model in models:
        with asyncio.Runner() as runner:  # vLLM's output handler lives on the loop it started on
            rows += runner.run(bench_model(model, n))
    path = write_results(
        "vllm_scoring",
        rows,
        models=models,
        queries=n,
        dtype="float32",
        load_average={"start": list(load_start), "end": list(os.getloadavg())},
    )
    log(f"wrote {path}")


if __name__ == "__main__":
    main()
