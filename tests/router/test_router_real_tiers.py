"""The router in front of two real edge nodes running tiny models (llama and gemma3)."""

from __future__ import annotations

import statistics

import pytest
import yaml

from tests.support.aio import BackgroundLoop
from tierlm.client import Client
from tierlm.edge.server import load_generator, start_edge
from tierlm.router.serve.scoring import confidence
from tierlm.router.serve.server import start_router, stop_router
from tierlm.serving import ServerConfig
from tierlm.v1 import generator_pb2, router_pb2

PROMPTS = ["The market rose today", "Gold prices fell", "Oil futures were steady", "Shares climbed",
           "The quick brown fox", "Headlines: stocks up", "Traders waited", "Gold"]


@pytest.fixture(scope="module")
def stack(llama_dir, gemma_dir, tmp_path_factory):
    loop = BackgroundLoop()
    generators = {name: load_generator(path, name, threads=1, max_batch=4, max_queue=16)
                  for name, path in (("edge", llama_dir), ("cloud", gemma_dir))}
    servers = {name: loop.run(start_edge(g, ServerConfig())) for name, g in generators.items()}
    # The edge answers' own confidence decides: put the threshold at the median of the prompts'.
    probe = [loop.run(generators["edge"].generate(generator_pb2.GenerateRequest(prompt=p, max_tokens=6, return_logprobs=True)))
             for p in PROMPTS]
    threshold = statistics.median(confidence(a) for a in probe)
    work = tmp_path_factory.mktemp("router")
    policy = work / "policy.yaml"
    policy.write_text(yaml.safe_dump({
        "tiers": [{"name": n, "address": f"127.0.0.1:{s.port}", "cost": {"per_output_token": c}}
                  for (n, s), c in zip(servers.items(), (1e-7, 1e-5))],
        "cascade": {"order": ["edge", "cloud"], "thresholds": {"edge": threshold}},
    }))
    router, service = loop.run(start_router(policy, ServerConfig(), work / "ledger.sqlite", auth=False))
    yield router, threshold
    loop.run(stop_router(router, service, grace_s=0))
    for server in servers.values():
        loop.run(server.stop(grace_s=0))
    for generator in generators.values():
        generator.engine.close(drain=False)
    loop.close()


def test_cascade_follows_the_threshold_on_real_model_answers(stack):
    router, threshold = stack
    outcomes = set()
    with Client(f"127.0.0.1:{router.port}") as client:
        for prompt in PROMPTS:
            answer = client.complete(prompt, max_tokens=6)
            first = answer.trace.attempts[0]
            assert first.tier == "edge" and first.has_score and first.threshold == pytest.approx(threshold)
            if first.score >= threshold:
                assert answer.tier == "edge" and len(answer.trace.attempts) == 1
                assert first.outcome == router_pb2.TIER_OUTCOME_ACCEPTED
            else:
                assert answer.tier == "cloud"
                assert [a.tier for a in answer.trace.attempts] == ["edge", "cloud"]
                assert first.outcome == router_pb2.TIER_OUTCOME_LOW_SCORE
            assert answer.text and answer.completion_tokens > 0
            outcomes.add(answer.tier)
    assert outcomes == {"edge", "cloud"}  # the median threshold sends some prompts each way
