"""Speculative decoding across tiers: a compressed Gemma 3 270M drafts at the edge, Gemma 3 270M fp32 verifies in the cloud.

    python bench/speculative.py [--draft-recipe rtn-w4g128] [--draft-vocab 0] [--out speculative]
    # the committed speculative.json (~25 min on 2 cores once the models are prepared):
    python bench/speculative.py --draft-recipe w8a8-plain --draft-vocab 32768

The cloud tier is a node on 127.0.0.1 serving Generate and Verify on Gemma 3 270M fp32 (the
torch engine, 1 thread, batch 1). The edge is a drafter in this process on the artifact of
``examples/recipes/<--draft-recipe>.yaml`` (default rtn-w4g128, int4; 1 thread), calling Verify
over gRPC. ``--draft-vocab N`` drafts from N tokens only (FR-Spec): those of
``data/text/python-docs/calib`` by count, then the tokenizer's lowest other ids
(:mod:`tierlm.edge.speculative.vocabulary`; the prompts come from the eval split). Both share this
2-core machine, one core each. A round trip of ``--rtt-ms`` (0, 10, 50) is simulated on the
channel to the cloud node (AddedLatency: half before each call, half after its answer), for the
cloud-only client as for the drafter; the client sits next to the edge, so reaching the drafter
costs nothing.

Each configuration generates ``--new-tokens`` (64) greedy tokens for each of ``--prompts`` (20)
prompts, one at a time: the openings of paragraphs of ``data/text/python-docs/eval``.

- ``cloud-only@<rtt>ms``: Generate on the cloud node. ``verifier_passes_per_token``: the cloud
  model's forward passes (prefill chunks and decode steps, from its engine's counters) per output
  token.
- ``speculative@<rtt>ms``: the drafter's rounds with adaptive k (``--k`` to start, at most
  ``--max-k``); passes and acceptance from each generation's speculative stats.
  ``identical_prompts``: generations token-identical to cloud-only's (greedy: must be all).
- ``fixed-k<k>@0ms``: k held fixed (``--fixed-k-prompts`` prompts), for the acceptance rate by k.

``decode_tok_s`` is output tokens over the wall time of the whole generation, prompt included.
Writes ``bench/results/<--out>.json`` and ``<--out>.png`` (default ``speculative``); exits 1 if any speculative
output differs from the cloud model's own.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import grpc
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.support.models import cached_artifact, prepared_model  # noqa: E402
from tierlm.edge.requests import GenerationRequest  # noqa: E402
from tierlm.edge.server import SpeculationConfig, load_generator, start_edge  # noqa: E402
from tierlm.edge.speculative.client import AddedLatency, GrpcVerifier, VerifierEndpoint  # noqa: E402
from tierlm.edge.speculative.drafter import Drafter, SpeculativeOptions  # noqa: E402
from tierlm.edge.speculative.sessions import SessionEngine  # noqa: E402
from tierlm.edge.speculative.vocabulary import vocabulary_from_text  # noqa: E402
from tierlm.results import RESULTS, write_results  # noqa: E402
from tierlm.serving import ServerConfig  # noqa: E402
from tierlm.v1 import generator_pb2, generator_pb2_grpc  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
MODEL = "gemma-3-270m"
EVAL_TEXT = ROOT / "data" / "text" / "python-docs" / "eval"
CALIB_TEXT = ROOT / "data" / "text" / "python-docs" / "calib"
PROMPT_CHARS = 240


@dataclass
class Run:
    """One configuration's totals over every prompt."""

    tokens: int = 0
    seconds: float = 0.0
    passes: int = 0
    drafted: int = 0
    accepted: int = 0
    verifier_tokens: int = 0
    rounds: int = 0

    def row(self, name: str, rtt_ms: float, **extra: object) -> dict:
        row = {
            "name": name, "rtt_ms": rtt_ms, "output_tokens": self.tokens,
            "decode_tok_s": round(self.tokens / self.seconds, 2),
            "verifier_passes_per_token": round(self.passes / self.tokens, 4),
        }
        if self.drafted:
            row |= {
                "acceptance_rate": round(self.accepted / self.drafted, 4), "rounds": self.rounds,
                "drafted_tokens": self.drafted, "accepted_tokens": self.accepted,
                "verifier_tokens_per_token": round(self.verifier_tokens / self.tokens, 3),
            }
        return row | extra


def prompts(count: int) -> list[str]:
    """The first ``PROMPT_CHARS`` characters of the eval text's long paragraphs, files taken in turn."""
    per_file = [
        [p.strip() for p in path.read_text(encoding="utf-8").split("\n\n") if len(p.strip()) >= PROMPT_CHARS]
        for path in sorted(EVAL_TEXT.glob("*.txt"))
    ]
    chosen = [paragraphs[i] for i in range(max(map(len, per_file))) for paragraphs in per_file if i < len(paragraphs)]
    if len(chosen) < count:
        raise SystemExit(f"{EVAL_TEXT} has only {len(chosen)} paragraphs of {PROMPT_CHARS}+ characters")
    return [paragraph[:PROMPT_CHARS].rsplit(" ", 1)[0] for paragraph in chosen[:count]]


async def cloud_only(address: str, rtt_s: float, texts: list[str], new_tokens: int, engine) -> tuple[Run, list[list[int]]]:
    run, outputs = Run(), []
    interceptors = [AddedLatency(rtt_s)] if rtt_s else []
    async with grpc.aio.insecure_channel(address, interceptors=interceptors) as channel:
        stub = generator_pb2_grpc.GeneratorStub(channel)
        for text in texts:
            before = engine.stats()
            started = time.perf_counter()
            reply = await stub.Generate(generator_pb2.GenerateRequest(prompt=text, max_tokens=new_tokens, return_logprobs=True))
            run.seconds += time.perf_counter() - started
            after = engine.stats()
            run.passes += (after.decode_steps + after.prefill_chunks) - (before.decode_steps + before.prefill_chunks)
            run.tokens += reply.usage.completion_tokens
            outputs.append([token.token_id for token in reply.logprobs])
    return run, outputs


async def speculative(drafting: SessionEngine, cloud, address: str, rtt_s: float, options: SpeculativeOptions,
                      texts: list[str], new_tokens: int) -> tuple[Run, list[list[int]]]:
    """Generate every text with ``drafting``'s model drafting for the cloud node at ``address``."""
    interceptors = [AddedLatency(rtt_s)] if rtt_s else []
    verifier = GrpcVerifier(VerifierEndpoint(address, timeout_s=60), interceptors)
    drafter = Drafter(drafting, cloud.engine.tokenizer, verifier, options, cloud.engine.model.config.eos_token_ids)
    run, outputs = Run(), []
    try:
        for text in texts:
            started = time.perf_counter()
            result = await drafter.generate(GenerationRequest(prompt=text, max_tokens=new_tokens))
            run.seconds += time.perf_counter() - started
            stats = result.speculative
            run.tokens += len(result.token_ids)
            run.passes += stats.verifier_passes
            run.drafted += stats.drafted_tokens
            run.accepted += stats.accepted_tokens
            run.verifier_tokens += stats.verifier_tokens
            run.rounds += stats.rounds
            outputs.append(list(result.token_ids))
    finally:
        await verifier.close()  # the drafting engine serves the next configuration
    return run, outputs


def plot(rows: list[dict], path: Path, drafter: str) -> None:
    figure, (speed, passes, by_k) = plt.subplots(1, 3, figsize=(14, 4))
    for mode, style in (("cloud-only", "o-"), ("speculative", "s-")):
        mine = [r for r in rows if r["name"].startswith(f"{mode}@")]
        speed.plot([r["rtt_ms"] for r in mine], [r["decode_tok_s"] for r in mine], style, label=mode)
        passes.plot([r["rtt_ms"] for r in mine], [r["verifier_passes_per_token"] for r in mine], style, label=mode)
    speed.set(xlabel="simulated round trip to the cloud (ms)", ylabel="output tokens/s", title="End to end, batch 1",
              ylim=(0, None))
    passes.set(xlabel="simulated round trip to the cloud (ms)", ylabel="cloud forward passes per output token",
               title="Cloud forward passes per token", ylim=(0, None))
    fixed = [r for r in rows if r["name"].startswith("fixed-k")]
    ks = [int(r["name"].removeprefix("fixed-k").split("@")[0]) for r in fixed]
    by_k.plot(ks, [r["acceptance_rate"] for r in fixed], "o-", label="acceptance rate")
    by_k.plot(ks, [r["verifier_passes_per_token"] for r in fixed], "s-", label="passes per token")
    by_k.set(xlabel="draft tokens per round (k, fixed)", title="By k, 0 ms", ylim=(0, 1.05), xscale="log", xticks=ks)
    by_k.set_xticklabels([str(k) for k in ks])
    by_k.minorticks_off()
    for axes in (speed, passes, by_k):
        axes.grid(alpha=0.3)
        axes.legend()
    figure.suptitle(f"Gemma 3 270M: {drafter} edge drafter, fp32 cloud verifier (greedy, 64 tokens)")
    figure.tight_layout()
    figure.savefig(path, dpi=110)


async def main(args: argparse.Namespace) -> int:
    torch.set_num_threads(1)
    verify_dir, draft_dir = prepared_model(MODEL), cached_artifact(MODEL, args.draft_recipe)
    texts = prompts(args.prompts)
    cloud = load_generator(verify_dir, "cloud", 1, 1, 8, SpeculationConfig(verify_sessions=4))
    server = await start_edge(cloud, ServerConfig(host="127.0.0.1", port=0))
    address = f"127.0.0.1:{server.port}"
    vocab = None
    if args.draft_vocab:
        vocab = vocabulary_from_text(CALIB_TEXT, cloud.engine.tokenizer, cloud.engine.model.config, args.draft_vocab)
    drafting = SessionEngine.from_pretrained(draft_dir, max_sessions=2, threads=1, draft_vocab=vocab)
    drafter_name = args.draft_recipe + (f", {len(vocab)}-token draft vocabulary" if vocab is not None else "")
    rows, mismatched = [], 0
    try:
        await cloud_only(address, 0.0, texts[:1], 8, cloud.engine)  # warm-up: first-call allocations
        for rtt_ms in args.rtt_ms:
            alone, reference = await cloud_only(address, rtt_ms / 1e3, texts, args.new_tokens, cloud.engine)
            rows.append(alone.row(f"cloud-only@{rtt_ms:g}ms", rtt_ms))
            drafted, outputs = await speculative(drafting, cloud, address, rtt_ms / 1e3, SpeculativeOptions(args.k, args.max_k),
                                                 texts, args.new_tokens)
            identical = sum(a == b for a, b in zip(outputs, reference))
            mismatched += len(texts) - identical
            rows.append(drafted.row(f"speculative@{rtt_ms:g}ms", rtt_ms, identical_prompts=identical, prompts=len(texts)))
            print(rows[-2], rows[-1], sep="\n", flush=True)
        for k in args.fixed_k:
            some = texts[: args.fixed_k_prompts]
            fixed, _ = await speculative(drafting, cloud, address, 0.0, SpeculativeOptions(k, k, adaptive=False), some, args.new_tokens)
            rows.append(fixed.row(f"fixed-k{k}@0ms", 0.0, prompts=len(some)))
            print(rows[-1], flush=True)
    finally:
        await server.stop(grace_s=0)
        cloud.engine.close(drain=False)
        await cloud.aclose_speculation()
        await drafting.aclose()
    path = write_results(
        args.out, rows, model=MODEL, draft=f"{MODEL} {args.draft_recipe} (tierlm artifact)", verify=f"{MODEL} fp32",
        draft_vocab=(f"{len(vocab)} tokens: those of {CALIB_TEXT.relative_to(ROOT)} by count, then the lowest other ids "
                     "(end-of-sequence included)" if vocab is not None else "every token"),
        prompts=len(texts), new_tokens=args.new_tokens, threads="1 for the cloud model, 1 for the drafter",
        rtt="simulated on the gRPC channel to the cloud node: half before each call, half after its answer",
    )
    plot(rows, RESULTS / f"{args.out}.png", drafter_name)
    print(f"wrote {path}")
    if mismatched:
        print(f"{mismatched} speculative generations differ from the cloud model's own", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--prompts", type=int, default=20)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--rtt-ms", type=float, nargs="+", default=[0.0, 10.0, 50.0])
    parser.add_argument("--k", type=int, default=4, help="draft tokens per round to start with (adaptive)")
    parser.add_argument("--max-k", type=int, default=10, help="the most draft tokens a round may carry (adaptive)")
    parser.add_argument("--fixed-k", type=int, nargs="+", default=[1, 2, 4, 8])
    parser.add_argument("--fixed-k-prompts", type=int, default=8, help="the first N prompts for the fixed-k rows")
    parser.add_argument("--draft-recipe", default="rtn-w4g128", help="examples/recipes/<name>.yaml compresses the drafter")
    parser.add_argument("--draft-vocab", type=int, default=0,
                        help="draft from N tokens only: the calib text's by count, then the lowest ids (0: every token)")
    parser.add_argument("--out", default="speculative", help="result name: bench/results/<out>.json and .png")
    sys.exit(asyncio.run(main(parser.parse_args())))
