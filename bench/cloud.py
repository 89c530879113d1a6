"""Cloud tier throughput: output tokens/s at 1/8/32 concurrent requests through Serve's gRPC proxy.

Same run, same model, same prompts, for each engine (`torch`, `vllm`), compared against
  - `hf-generate-sequential`: transformers' greedy `generate`, one request after another;
  - `bare-<engine>@N`: the same engine in this process without Ray Serve (Serve's overhead).

    python bench/cloud.py --model ~/.cache/tierlm/models/gemma-3-270m --engines torch vllm
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tierlm.results import write_results  # noqa: E402
from tests.support.ports import free_port  # noqa: E402
from tierlm.v1 import generator_pb2  # noqa: E402

BASELINE = "hf-generate-sequential"
TOPICS = ["gold prices", "the central bank", "oil futures", "tech shares", "the dollar", "bond yields", "copper", "wheat"]


def prompts(n: int) -> list[str]:
    return [f"Write a short market note about {TOPICS[i % len(TOPICS)]} (note {i}):" for i in range(n)]


def hf_sequential(model_dir: Path, items: list[str], max_tokens: int, threads: int) -> dict:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.set_num_threads(threads)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    tokens, latencies = 0, []
    started = time.perf_counter()
    with torch.inference_mode():
        for prompt in items:
            begin = time.perf_counter()
            ids = tokenizer(prompt, return_tensors="pt").input_ids
            out = model.generate(ids, max_new_tokens=max_tokens, min_new_tokens=max_tokens, do_sample=False)
            tokens += out.shape[1] - ids.shape[1]
            latencies.append((time.perf_counter() - begin) * 1e3)
    return _row(BASELINE, 1, tokens, time.perf_counter() - started, latencies)


def _row(name: str, concurrency: int, tokens: int, seconds: float, latencies: list[float]) -> dict:
    return {
        "name": name,
        "concurrency": concurrency,
        "requests": len(latencies),
        "decode_tok_s": round(tokens / seconds, 2),
        "latency_ms_p50": round(float(np.percentile(latencies, 50)), 1),
        "latency_ms_p95": round(float(np.percentile(latencies, 95)), 1),
    }


def request(prompt: str, max_tokens: int) -> generator_pb2.GenerateRequest:
    return generator_pb2.GenerateRequest(prompt=prompt, max_tokens=max_tokens)


def through_serve(address: str, items: list[str], concurrency: int, max_tokens: int, name: str) -> dict:
    import grpc

    from tierlm.v1 import generator_pb2_grpc

    with grpc.insecure_channel(address) as channel:
        stub = generator_pb2_grpc.GeneratorStub(channel)
        stub.Generate(request(items[0], 4), timeout=300)  # warm-up

        def one(prompt: str) -> tuple[int, float]:
            begin = time.perf_counter()
            reply = stub.Generate(request(prompt, max_tokens), timeout=600)
            return reply.usage.completion_tokens, (time.perf_counter() - begin) * 1e3

        started = time.perf_counter()
        with ThreadPoolExecutor(concurrency) as pool:
            results = list(pool.map(one, items))
    return _row(name, concurrency, sum(t for t, _ in results), time.perf_counter() - started, [ms for _, ms in results])


def bare_engine(config, items: list[str], levels: list[int], max_tokens: int, engine_name: str) -> list[dict]:
    """The engine of ``config``'s first model in this process, started once, at each concurrency."""
    from tierlm.cloud.engines import make_engine

    engine = make_engine(config.models[0], "cloud")
    engine.start()

    async def level(concurrency: int) -> dict:
        gate = asyncio.Semaphore(concurrency)

        async def one(prompt: str) -> tuple[int, float]:
            async with gate:
                begin = time.perf_counter()
                reply = await engine.generate(request(prompt, max_tokens))
                return reply.usage.completion_tokens, (time.perf_counter() - begin) * 1e3

        started = time.perf_counter()
        results = await asyncio.gather(*(one(p) for p in items))
        name = f"bare-{engine_name}@{concurrency}"
        return _row(name, concurrency, sum(t for t, _ in results), time.perf_counter() - started, [ms for _, ms in results])

    async def run() -> list[dict]:
        await engine.generate(request(items[0], 4))  # warm-up
        try:
            return [await level(c) for c in levels]
        finally:
            await engine.shutdown()

    return asyncio.run(run())


def engine_config(engine: str, model: Path, levels: list[int], threads: int, vllm_dtype: str):
    from tierlm.cloud.config import CloudConfig

    if engine == "vllm":
        options = {"enforce_eager": True, "dtype": vllm_dtype, "max_model_len": 1024, "cpu_kv_cache_gib": 1}
    else:
        options = {"threads": threads, "max_batch": max(levels), "max_queue": 4 * max(levels)}
    return CloudConfig(
        models=[{"name": model.name, "path": str(model), "engine": engine, "engine_options": options,
                 "max_ongoing_requests": 4 * max(levels)}],
        grpc_port=free_port(), http_port=free_port(),
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=Path("~/.cache/tierlm/models/gemma-3-270m").expanduser())
    parser.add_argument("--engines", choices=["torch", "vllm"], nargs="+", default=["torch", "vllm"])
    parser.add_argument("--vllm-dtype", default="float32", help="vLLM's model dtype (its int4/int8 CPU kernels need float16/bfloat16)")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--requests", type=int, default=32, help="requests per concurrency level")
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    from tierlm.cloud.runner import start_cloud, stop_cloud
    from tierlm.edge.engine import on_passing_thread

    items = prompts(args.requests)
    # Off the main thread: torch work left on it would slow the in-process engines' decode
    # threads below (an idle OpenMP team; see on_passing_thread).
    baseline_items = items[: max(4, args.requests // 4)]
    rows = [on_passing_thread(lambda: hf_sequential(args.model, baseline_items, args.max_tokens, args.threads))]
    for engine in args.engines:
        config = engine_config(engine, args.model, args.concurrency, args.threads, args.vllm_dtype)
        rows += bare_engine(config, items, args.concurrency, args.max_tokens, engine)
        endpoints = start_cloud(config, num_cpus=args.threads)
        try:
            for concurrency in args.concurrency:
                rows.append(through_serve(endpoints.grpc_address, items, concurrency, args.max_tokens, f"serve-{engine}@{concurrency}"))
        finally:
            stop_cloud()
    baseline = rows[0]["decode_tok_s"]
    for row in rows:
        row[f"speedup_vs_{BASELINE}"] = round(row["decode_tok_s"] / baseline, 2)
    table = Table(title=f"cloud tier, {args.model.name}, {args.threads} threads, {args.max_tokens} tokens/request")
    columns = ["name", "concurrency", "requests", "decode_tok_s", "latency_ms_p50", "latency_ms_p95", f"speedup_vs_{BASELINE}"]
    for column in columns:
        table.add_column(column)
    for row in rows:
        table.add_row(*(str(row[c]) for c in columns))
    Console().print(table)
    print(write_results("cloud", rows, model=args.model.name, engines=args.engines, vllm_dtype=args.vllm_dtype, threads=args.threads))


if __name__ == "__main__":
    main()
