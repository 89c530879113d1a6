"""Edge node bench: decode tokens/s, TTFT and latency at 1 and 8 concurrent streams, one run.

    python bench/edge.py [--model gemma-3-270m] [--artifact composite-edge --artifact w8a8 ...]
                         [--threads 2] [--tokens 64] [--concurrency 1 8] [--compile] [--no-llama-cpp] [--quick]

Each configuration (the prepared fp32 HF folder, then each compressed artifact, built from
``examples/recipes/<name>.yaml`` into ``~/.cache/tierlm/artifacts/<model>/<name>`` when missing
and reused while its recipe is unchanged) is served by a real edge node, ``tierlm edge serve
--threads T`` in its own process on 127.0.0.1, and measured by gRPC streaming clients in
this process: C greedy streams of the same prompt start together (after a warm-up at the same
concurrency), and each stream's token arrival times are recorded as the client sees them.
Each measurement is repeated `--rounds` times, the concurrencies interleaved (1, 8, 1, 8, ...)
so that load from other processes falls on all of them alike; a row is the round with the
median ``decode_tok_s``, with the rounds' minimum and maximum next to it.
The anchor is llama.cpp (``llama-cpp-python``, the optional bench extra) on the model's own
Q4_K_M GGUF with the same threads, at concurrency 1, timed in this process the way a server
runs its token loop: one ``eval`` per token, llama.cpp's own greedy sampler, detokenizing
each token for the stream (its high-level completion call is slow on a 262k vocabulary).

Metrics per row (tierlm/results.py shape): ``decode_tok_s`` counts every stream's tokens after its first,
over the time from the first first-token to the last stream's end (prefill left out as far
as streams start together); ``output_tok_s`` is all tokens over the whole wall time; TTFT and
end-to-end latency p50/p95 over the streams, inter-token latency p50/p95 over every gap.
Ratios: ``speedup_vs_1_stream`` (C > 1 rows), ``speedup_vs_fp32`` and
``speedup_vs_llama_cpp`` (concurrency 1 rows). ``load_s``: seconds until serving (edge: from
process start to listening; llama.cpp: loading the GGUF). ``ppl_vs_fp32``: the relative
perplexity increase of the model a row runs (bench/compression.py's evaluation, the first
``--ppl-tokens`` eval tokens; perplexities cached there are reused). ``--quick``: 32 tokens
per stream, one round, perplexity on 8192 tokens. ``--compile``: each configuration is served a
second time with ``tierlm edge serve --compile`` (rows ``<name> compiled``, ``compiled: true``;
their ``load_s`` includes building the graphs, from an empty inductor cache when the bench
points ``TORCHINDUCTOR_CACHE_DIR`` at a new folder, as it does). Writes bench/results/edge.json
and prints the table for the README.

`measure_engine` and `llama_cpp_stream` are also the batch-1 decode timers of
bench/compression.py, so both benches time decoding the same way.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # `bench.*` imports when run as a script

# A news-style prompt the Gemma base model continues past 64 tokens without an end-of-text
# token (the wire contract has no ignore-EOS switch; rows report the tokens actually made).
PROMPT = "Gold prices fell sharply after the central bank raised rates, and traders said"
DEFAULT_ARTIFACTS = ("composite-edge", "gptq-w4g64", "w8a8-plain", "w8a8-t4")
SERVER_START_TIMEOUT_S = 600.0


@dataclass
class StreamTiming:
    """When one stream was sent and when each of its tokens arrived (perf_counter seconds)."""

    start: float
    token_times: list[float] = field(default_factory=list)
    end: float = 0.0

    @property
    def tokens(self) -> int:
        return len(self.token_times)


def percentile(values: list[float], q: int) -> float:
    """The q-th percentile (inclusive method); the value itself for a single sample."""
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1] if len(values) > 1 else values[0]


def summarize(streams: list[StreamTiming]) -> dict:
    """The metric columns of one measurement: streams that ran together."""
    if any(s.tokens < 2 for s in streams):
        raise RuntimeError("a stream produced fewer than two tokens: nothing to time")
    start = min(s.start for s in streams)
    first = min(s.token_times[0] for s in streams)
    end = max(s.end for s in streams)
    gaps = [b - a for s in streams for a, b in zip(s.token_times, s.token_times[1:])]
    ms = lambda seconds: round(1000 * seconds, 1)  # noqa: E731
    return {
        "concurrency": len(streams),
        "decode_tok_s": round(sum(s.tokens - 1 for s in streams) / (end - first), 2),
        "output_tok_s": round(sum(s.tokens for s in streams) / (end - start), 2),
        "ttft_ms_p50": ms(percentile([s.token_times[0] - s.start for s in streams], 50)),
        "ttft_ms_p95": ms(percentile([s.token_times[0] - s.start for s in streams], 95)),
        "latency_ms_p50": ms(percentile([s.end - s.start for s in streams], 50)),
        "latency_ms_p95": ms(percentile([s.end - s.start for s in streams], 95)),
        "itl_ms_p50": ms(percentile(gaps, 50)),
        "itl_ms_p95": ms(percentile(gaps, 95)),
        "tokens_per_stream": round(statistics.mean(s.tokens for s in streams), 1),
    }


# ---- in process: the engine itself (bench/compression.py's decode timer) ----


async def _engine_stream(engine, tokens: int) -> StreamTiming:
    from tierlm.edge import GenerationRequest

    timing = StreamTiming(time.perf_counter())
    async for event in engine.stream(GenerationRequest(prompt=PROMPT, max_tokens=tokens, ignore_eos=True)):
        if hasattr(event, "token_id"):  # a TokenDelta; the Completion ends the stream
            timing.token_times.append(time.perf_counter())
    timing.end = time.perf_counter()
    return timing


def measure_engine(engine, concurrency: int, tokens: int) -> dict:
    """`summarize` of `concurrency` streams through an in-process `Engine` (EOS ignored), after a warm-up."""

    async def run() -> list[StreamTiming]:
        await asyncio.gather(*(_engine_stream(engine, 4) for _ in range(concurrency)))
        return list(await asyncio.gather(*(_engine_stream(engine, tokens) for _ in range(concurrency))))

    return summarize(asyncio.run(run()))


# ---- through a real edge node ----


class EdgeServer:
    """`tierlm edge serve` on 127.0.0.1 in a child process; a context manager that stops it."""

    def __init__(self, model: Path, threads: int, max_batch: int, compile: bool = False) -> None:
        self.command = [
            sys.executable, "-m", "tierlm.app.cli", "--log-level", "WARNING", "edge", "serve",
            "--model", str(model), "--host", "127.0.0.1", "--port", "0",
            "--threads", str(threads), "--max-batch", str(max_batch), "--max-queue", str(max_batch), "--no-auth",
            "--compile" if compile else "--no-compile",
        ]  # fmt: skip
        self.process: subprocess.Popen | None = None
        self.port = 0
        self.load_s = 0.0

    def __enter__(self) -> EdgeServer:
        start = time.perf_counter()
        self.process = subprocess.Popen(self.command, stdout=subprocess.PIPE, text=True, cwd=ROOT)
        try:
            self.port = self._wait_for_port()
        except BaseException:
            self.__exit__()
            raise
        self.load_s = time.perf_counter() - start
        return self

    def _wait_for_port(self) -> int:
        assert self.process is not None and self.process.stdout is not None
        deadline = time.monotonic() + SERVER_START_TIMEOUT_S
        for line in self.process.stdout:  # the server prints "EDGE_PORT <n>" once it listens
            if line.startswith("EDGE_PORT "):
                return int(line.split()[1])
            if time.monotonic() > deadline:
                break
        raise RuntimeError(f"edge server did not start (exit code {self.process.poll()}): {' '.join(self.command)}")

    def __exit__(self, *exc_info) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)  # drains in-flight streams, then exits
        try:
            self.process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


async def _grpc_stream(stub, tokens: int) -> StreamTiming:
    from tierlm.v1 import generator_pb2

    request = generator_pb2.GenerateRequest(prompt=PROMPT, max_tokens=tokens)
    timing = StreamTiming(time.perf_counter())
    async for message in stub.GenerateStream(request, timeout=3600):
        if message.is_final:
            timing.end = time.perf_counter()
            if message.usage.completion_tokens != timing.tokens:
                raise RuntimeError(f"{timing.tokens} token messages for {message.usage.completion_tokens} tokens")
        else:
            timing.token_times.append(time.perf_counter())  # the server sends one message per token
    return timing


async def measure_server(port: int, concurrency: int, tokens: int) -> dict:
    """`summarize` of `concurrency` gRPC streams against the edge node on `port`, after a warm-up."""
    import grpc

    from tierlm.v1 import generator_pb2_grpc

    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = generator_pb2_grpc.GeneratorStub(channel)
        await asyncio.gather(*(_grpc_stream(stub, 4) for _ in range(concurrency)))
        streams = await asyncio.gather(*(_grpc_stream(stub, tokens) for _ in range(concurrency)))
    return summarize(list(streams))


def median_round(name: str, rounds: list[dict], **extra) -> dict:
    """The round with the median decode speed, labelled, with the spread of all rounds."""
    speeds = [r["decode_tok_s"] for r in rounds]
    middle = sorted(rounds, key=lambda r: r["decode_tok_s"])[(len(rounds) - 1) // 2]
    row = {"name": name, **middle, "decode_tok_s_min": min(speeds), "decode_tok_s_max": max(speeds), **extra}
    log(str(row))
    return row


def bench_server(name: str, model: Path, args: argparse.Namespace, compile: bool = False) -> list[dict]:
    results: dict[int, list[dict]] = {c: [] for c in args.concurrency}
    with EdgeServer(model, args.threads, max(args.concurrency), compile) as server:
        log(f"{name}: serving on port {server.port} (started in {server.load_s:.1f} s)")
        for _ in range(args.rounds):
            for c in args.concurrency:
                results[c].append(asyncio.run(measure_server(server.port, c, args.tokens)))
    extra = {"compiled": True} if compile else {}
    return [median_round(name, rounds, load_s=round(server.load_s, 1), **extra) for rounds in results.values()]


# ---- llama.cpp ----


def llama_cpp_stream(llm, prompt_ids: list[int], tokens: int) -> StreamTiming:
    """Greedy-decode `tokens` tokens after `prompt_ids` as a server's token loop does.

    Prompt in one `eval`, then per token: llama.cpp's greedy sampler on the last logits, the
    token's text, one `eval`. Starts from an empty KV cache.
    """
    import llama_cpp

    sampler = llama_cpp.llama_sampler_init_greedy()
    try:
        llm.reset()
        timing = StreamTiming(time.perf_counter())
        llm.eval(prompt_ids)
        for i in range(tokens):
            token = llama_cpp.llama_sampler_sample(sampler, llm.ctx, -1)
            llm.detokenize([token])  # a server streams each token's text
            timing.token_times.append(time.perf_counter())
            if i + 1 < tokens:
                llm.eval([token])
        timing.end = timing.token_times[-1]
        return timing
    finally:
        llama_cpp.llama_sampler_free(sampler)


def bench_llama_cpp(gguf: Path, args: argparse.Namespace) -> dict:
    from llama_cpp import Llama

    start = time.perf_counter()
    llm = Llama(str(gguf), n_ctx=512, n_threads=args.threads, n_threads_batch=args.threads, verbose=False)
    load_s = time.perf_counter() - start
    ids = llm.tokenize(PROMPT.encode(), add_bos=True)
    llama_cpp_stream(llm, ids, 4)  # warm-up
    rounds = [summarize([llama_cpp_stream(llm, ids, args.tokens)]) for _ in range(args.rounds)]
    llm.close()
    return median_round("llama.cpp-q4_k_m", rounds, load_s=round(load_s, 1))


# ---- the run ----


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def add_ratios(rows: list[dict]) -> None:
    """Scaling with concurrency per configuration, and single-stream speed against fp32 and llama.cpp."""
    single = {r["name"]: r["decode_tok_s"] for r in rows if r["concurrency"] == 1}
    for row in rows:
        if row["concurrency"] > 1 and row["name"] in single:
            row["speedup_vs_1_stream"] = round(row["decode_tok_s"] / single[row["name"]], 2)
        elif row["concurrency"] == 1:
            for key, base in (("speedup_vs_fp32", "fp32"), ("speedup_vs_llama_cpp", "llama.cpp-q4_k_m")):
                if base in single:
                    row[key] = round(row["decode_tok_s"] / single[base], 2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="gemma-3-270m", help="registered model name (tierlm model list)")
    parser.add_argument("--artifact", action="append", help=f"recipe name under examples/recipes (repeatable); default: {', '.join(DEFAULT_ARTIFACTS)}")
    parser.add_argument("--threads", type=int, default=2, help="server threads (and llama.cpp's)")
    parser.add_argument("--tokens", type=int, default=64, help="tokens generated per stream")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--rounds", type=int, default=3, help="repetitions of each measurement (median reported)")
    parser.add_argument("--no-llama-cpp", action="store_true", help="leave out the llama.cpp anchor row")
    parser.add_argument("--ppl-tokens", type=int, help="eval tokens of the ppl_vs_fp32 perplexities (default: all)")
    parser.add_argument("--quick", action="store_true", help="32 tokens per stream, one round, perplexity on 8192 tokens")
    parser.add_argument("--compile", action="store_true", help="also serve each configuration with --compile (rows '<name> compiled')")
    parser.add_argument("--name", default="edge", help="results file bench/results/NAME.json (e.g. edge_t1 for a 1-thread run)")
    args = parser.parse_args()
    if args.quick:
        args.tokens, args.rounds, args.ppl_tokens = 32, 1, args.ppl_tokens or 8192

    from bench.compression import RECIPES, artifact_for
    from tierlm.edge import catalog
    from tierlm.results import write_results

    folder = catalog.prepare(args.model)
    artifacts = catalog.cache_root() / "artifacts" / folder.name
    configs = [("fp32", folder)]
    for name in args.artifact or DEFAULT_ARTIFACTS:
        path, _ = artifact_for(folder, RECIPES / f"{name}.yaml", artifacts, True, args.threads)
        configs.append((name, path))

    load_before = os.getloadavg()
    rows: list[dict] = []
    notes: dict[str, str] = {}
    ppl = perplexities(dict(configs), args)
    if args.no_llama_cpp:
        notes["llama.cpp-q4_k_m"] = "left out (--no-llama-cpp)"
    else:
        try:
            import llama_cpp  # noqa: F401
        except ImportError:
            notes["llama.cpp-q4_k_m"] = "left out: llama-cpp-python is not installed (optional bench extra)"
        else:
            gguf = catalog.gguf_path(args.model)
            row = bench_llama_cpp(gguf, args)
            row["ppl_vs_fp32"] = round(llama_cpp_perplexity(gguf, args) / ppl["fp32"] - 1, 4)
            rows.append(row)
    with tempfile.TemporaryDirectory(prefix="tierlm-bench-inductor-") as inductor_cache:
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = inductor_cache  # compile times from scratch, not a past run's cache
        for name, path in configs:
            for compile in (False, True) if args.compile else (False,):
                for row in bench_server(f"{name} compiled" if compile else name, path, args, compile):
                    row["ppl_vs_fp32"] = round(ppl[name] / ppl["fp32"] - 1, 4)
                    rows.append(row)
    add_ratios(rows)

    path = write_results(
        args.name,
        rows,
        model=args.model,
        threads=args.threads,
        tokens_per_stream=args.tokens,
        rounds=args.rounds,
        prompt=PROMPT,
        perplexity={"eval_tokens": args.ppl_tokens, "context": 512, "stride": 256},
        load_average_before_after=[round(load_before[0], 2), round(os.getloadavg()[0], 2)],
        notes=notes,
    )
    print(table(rows, notes))
    log(f"wrote {path}")


def _ppl_settings(args: argparse.Namespace) -> dict:
    return {"context": 512, "stride": 256, "max_tokens": args.ppl_tokens}


def perplexities(configs: dict[str, Path], args: argparse.Namespace) -> dict[str, float]:
    """Perplexity of each configuration, with bench/compression.py's evaluation and cache."""
    from bench.compression import PPL_CACHE, PerplexityCache, in_fresh_process, perplexity_of
    from tierlm.edge import catalog

    cache = PerplexityCache(catalog.cache_root() / PPL_CACHE, enabled=True)
    settings = _ppl_settings(args)
    out = {}
    for name, path in configs.items():
        key = cache.key(path, settings)
        scored = cache.get(key)
        if scored is None:
            log(f"{name}: perplexity")
            scored = in_fresh_process(perplexity_of, str(path), 512, 256, args.ppl_tokens, args.threads)
            cache.put(key, scored)
        out[name] = scored["ppl"]
    return out


def llama_cpp_perplexity(gguf: Path, args: argparse.Namespace) -> float:
    from types import SimpleNamespace

    from transformers import AutoTokenizer

    from bench.compression import EVAL_TEXT, PPL_CACHE, PerplexityCache, llama_perplexity
    from tierlm.edge import catalog, perplexity

    cache = PerplexityCache(catalog.cache_root() / PPL_CACHE, enabled=True)
    key = cache.key(gguf, _ppl_settings(args))
    scored = cache.get(key)
    if scored is None:
        tokenizer = AutoTokenizer.from_pretrained(str(catalog.prepare(args.model)))
        ids, bos = perplexity.encode(tokenizer, perplexity.read_text(EVAL_TEXT), args.ppl_tokens)
        scored = llama_perplexity(gguf, ids, bos, SimpleNamespace(context=512, stride=256, threads=args.threads))
        cache.put(key, scored)
    return scored["ppl"]


def table(rows: list[dict], notes: dict[str, str]) -> str:
    """The rows as a Markdown table (for the README)."""
    pair = lambda r, key: f"{r[key + '_p50']:.0f} / {r[key + '_p95']:.0f}"  # noqa: E731
    ratio = lambda r, key: f"{r[key]:.2f}×" if key in r else ""  # noqa: E731
    lines = [
        "| row | Δppl vs fp32 | streams | decode tok/s (rounds' range) | TTFT p50 / p95 ms | latency p50 / p95 ms "
        "| inter-token p50 / p95 ms | vs 1 stream | vs fp32 | vs llama.cpp |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['name']} | {100 * r['ppl_vs_fp32']:+.1f}% | {r['concurrency']} "
            f"| {r['decode_tok_s']:.1f} ({r['decode_tok_s_min']:.1f}–{r['decode_tok_s_max']:.1f}) "
            f"| {pair(r, 'ttft_ms')} | {pair(r, 'latency_ms')} | {pair(r, 'itl_ms')} "
            f"| {ratio(r, 'speedup_vs_1_stream')} | {ratio(r, 'speedup_vs_fp32')} | {ratio(r, 'speedup_vs_llama_cpp')} |"
        )
    lines += [f"\n{name}: {note}" for name, note in notes.items()]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
