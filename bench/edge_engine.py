"""Decode throughput of the edge engine at 1 and 8 concurrent streams, threads pinned.

    python bench/edge_engine.py [--model HF_FOLDER ...] [--threads 2] [--tokens 64]

Always measures a tiny random Llama built on the spot; each `--model` folder (e.g. the
prepared Gemma 3 270M) is measured too. Writes bench/results/edge_engine.json in the shape
of DESIGN §7. `decode_tok_s` counts tokens after each stream's first one, over the time from
the first stream's first token to the last stream's end (prefill excluded as far as streams
start together); `output_tok_s` is all tokens over the whole wall time.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

PROMPT = "Gold prices fell sharply after the central bank raised rates, and traders said"


def machine(threads: int) -> str:
    cpu = platform.processor() or "cpu"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} cores, torch threads={threads}"


def percentile(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1] if len(values) > 1 else values[0]


async def measure(engine, concurrency: int, tokens: int) -> dict:
    from tierlm.edge import GenerationRequest

    request = GenerationRequest(prompt=PROMPT, max_tokens=tokens, ignore_eos=True)
    await engine.generate(request)  # warm-up
    start = time.perf_counter()
    results = await asyncio.gather(*(engine.generate(request) for _ in range(concurrency)))
    wall = time.perf_counter() - start
    first_token = start + min(r.ttft_s for r in results)
    end = start + max(r.latency_s for r in results)
    decoded = sum(r.completion_tokens - 1 for r in results)
    return {
        "concurrency": concurrency,
        "decode_tok_s": round(decoded / (end - first_token), 2),
        "output_tok_s": round(sum(r.completion_tokens for r in results) / wall, 2),
        "ttft_ms_p50": round(1000 * percentile([r.ttft_s for r in results], 50), 1),
        "latency_ms_p50": round(1000 * percentile([r.latency_s for r in results], 50), 1),
        "latency_ms_p95": round(1000 * percentile([r.latency_s for r in results], 95), 1),
        "tokens_per_stream": tokens,
    }


def bench_model(name: str, path: Path, args) -> list[dict]:
    from tierlm.edge import Engine

    t0 = time.perf_counter()
    engine = Engine.from_pretrained(path, max_batch=max(args.concurrency), threads=args.threads, max_seq_len=256)
    load_s = time.perf_counter() - t0
    rows = []
    try:
        for c in args.concurrency:
            row = {"name": name, **asyncio.run(measure(engine, c, args.tokens)), "load_s": round(load_s, 2)}
            print(json.dumps(row), file=sys.stderr)
            rows.append(row)
    finally:
        engine.close()
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", action="append", default=[], type=Path, help="HF model folder (repeatable)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--tokens", type=int, default=64, help="tokens generated per stream")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "edge_engine.json")
    args = parser.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    from tierlm.edge.tiny import build_model

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        build_model(Path(tmp), "llama", hidden_size=256, num_layers=4)
        rows += bench_model("tiny-llama-h256-l4-fp32", Path(tmp), args)
    for path in args.model:
        if not (path / "config.json").exists():
            print(f"skipping {path}: no config.json", file=sys.stderr)
            continue
        rows += bench_model(f"{path.name}-fp32", path, args)

    result = {
        "bench": "edge_engine",
        "machine": machine(args.threads),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join(sys.argv),
        "rows": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
