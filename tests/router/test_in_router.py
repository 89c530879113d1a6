"""No-LLM tiers the router answers itself (`in_router: true`): the policy rules, the same answers
as the tier served on its own, and no second embedding or similarity product per request."""

from __future__ import annotations

import asyncio
from pathlib import Path

import grpc
import numpy as np
import pytest
import yaml

from tests.support.echo_server import LabelGenerator, start_generator
from tests.support.workloads import LABELS, headlines
from tierlm.client import Client
from tierlm.config import PolicyError, TierConfig, load_policy
from tierlm.router.embeddings import Similarities
from tierlm.router.nollm.knn_tier import KnnGenerator
from tierlm.router.serve.in_router import InRouterTier
from tierlm.router.serve.query import RequestQuery, current_query
from tierlm.router.serve.tiers import TierFailure
from tierlm.router.workload import write_workload
from tierlm.serving import ServerConfig
from tierlm.v1 import generator_pb2

CHOICES = [f" {label}" for label in LABELS]
KNN = {"name": "knn", "in_router": True, "model": "knn-vote", "cost": {"per_call": 1.0e-8}}


def policy_problems(tmp_path: Path, tier: dict, pool: bool = True) -> str:
    document = {"tiers": [tier], "cascade": {"order": [tier["name"]]}}
    if pool:
        write_workload([r.model_dump() for r in list(headlines("train"))[:20]], tmp_path / "pool.jsonl")
        document["pool"] = str(tmp_path / "pool.jsonl")
    (tmp_path / "policy.yaml").write_text(yaml.safe_dump(document))
    try:
        load_policy(tmp_path / "policy.yaml")
    except PolicyError as exc:
        return str(exc)
    return ""


def test_only_a_no_llm_model_over_the_pool_runs_in_the_router(tmp_path: Path) -> None:
    assert policy_problems(tmp_path, KNN) == ""
    assert "only a no-LLM model ['knn-vote', 'minilm-probe'] runs in the router, not 'gemma-3-270m'" in policy_problems(
        tmp_path, {**KNN, "model": "gemma-3-270m"})
    assert "remove address" in policy_problems(tmp_path, {**KNN, "address": "127.0.0.1:50081"})
    assert "remove launch" in policy_problems(tmp_path, {**KNN, "launch": {"runtime": "knn"}})
    assert "learns from the policy's `pool`" in policy_problems(tmp_path, KNN, pool=False)
    assert "set the tier's address (host:port), or in_router: true" in policy_problems(
        tmp_path, {"name": "edge", "cost": {"per_call": 1.0}})


class Comparing:
    """The router's ``compare`` over an encoder, counting its calls."""

    def __init__(self, encoder):
        self.encoder, self.calls = encoder, 0

    async def __call__(self, text, pools):
        self.calls += 1
        embedding = self.encoder.encode([text])[0]
        return embedding, tuple(pool(embedding) for pool in pools)


class DenseEncoder:
    """A dense pseudo-random unit vector per text: no two rows tie, so the router's batched
    similarities and the served tier's own product (equal up to float rounding) rank alike.
    The bag-of-words stand-in ties often, and a tie at the k-th neighbour may then break either way."""

    model_id = "dense-random-64"

    def encode(self, texts):
        rows = np.stack([np.random.default_rng(list(text.encode())).normal(size=64) for text in texts]).astype(np.float32)
        return rows / np.linalg.norm(rows, axis=1, keepdims=True)


def test_the_tier_answers_what_it_answers_on_its_own_from_the_routed_query() -> None:
    pool = list(headlines("train"))[:200]
    encoder = DenseEncoder()
    served = KnnGenerator(encoder, pool, tier_name="knn")  # what `tierlm knn serve` runs
    index = Similarities(served.pool_embeddings)
    compare = Comparing(encoder)
    tier = InRouterTier(TierConfig(**KNN), KnnGenerator(encoder, pool, tier_name="knn", pool_embeddings=index.rows),
                        index, compare)
    queries = [pool[3].query] + [row.query for row in list(headlines("dev"))[:30]]  # a pool row: it must not vote

    async def routed(text: str) -> generator_pb2.GenerateResponse:
        query = RequestQuery(text, compare=compare, pools=(index,))
        await query.embedded()
        current_query.set(query)
        return await tier.generate(generator_pb2.GenerateRequest(prompt=text, choices=CHOICES), None)

    for text in queries:
        expected = served.answer(generator_pb2.GenerateRequest(prompt=text, choices=CHOICES))
        calls = compare.calls
        answer = asyncio.run(routed(text))
        assert compare.calls == calls + 1  # the routed query's own embedding; the tier computed nothing
        assert (answer.text, list(answer.choice_logprobs)) == (expected.text, list(expected.choice_logprobs))
        assert answer.model == "knn-vote" and answer.tier == "knn"
        # Outside a routed request (or for another text) the tier embeds the query itself.
        alone = asyncio.run(tier.generate(generator_pb2.GenerateRequest(prompt=text, choices=CHOICES), None))
        assert compare.calls == calls + 2 and alone.text == expected.text

    with pytest.raises(TierFailure) as failure:
        asyncio.run(tier.generate(generator_pb2.GenerateRequest(prompt="gold", choices=[" sideways"]), None))
    assert failure.value.code == grpc.StatusCode.INVALID_ARGUMENT


def test_a_router_answers_its_knn_tier_with_the_requests_one_embedding(loop, tmp_path, monkeypatch) -> None:
    from tierlm.router.serve.batcher import EncodeBatcher
    from tierlm.router.serve.server import start_router, stop_router
    from tierlm.router.static_encoder import StaticEncoder

    pool = list(headlines("train"))[:60]
    write_workload([r.model_dump() for r in pool], tmp_path / "pool.jsonl")
    edge = loop.run(start_generator(ServerConfig(), LabelGenerator("edge")))
    (tmp_path / "policy.yaml").write_text(yaml.safe_dump({
        "encoder": "static", "pool": str(tmp_path / "pool.jsonl"),
        "tiers": [KNN, {"name": "edge", "address": f"127.0.0.1:{edge.port}", "cost": {"per_call": 1.0e-6}}],
        "cascade": {"order": ["knn", "edge"], "thresholds": {"knn": 0.7}},
    }))
    compared: list[str] = []
    real = EncodeBatcher.embed_compared

    async def counting(self, text, pools):
        compared.append(text)
        return await real(self, text, pools)

    monkeypatch.setattr(EncodeBatcher, "embed_compared", counting)
    server, service = loop.run(start_router(tmp_path / "policy.yaml", ServerConfig(), tmp_path / "ledger.sqlite", auth=False))
    queries = [row.query for row in list(headlines("dev"))[:40]]
    try:
        with Client(f"127.0.0.1:{server.port}") as client:
            replies = [client.complete(query, choices=CHOICES, max_tokens=1) for query in queries]
    finally:
        loop.run(stop_router(server, service))
        loop.run(edge.stop(grace_s=0))
    assert compared == queries  # one embedding and similarity product per request, none by the tier
    knn = KnnGenerator(StaticEncoder.for_pool([row.query for row in pool]), pool, tier_name="knn")
    accepted = [(query, reply) for query, reply in zip(queries, replies) if reply.tier == "knn"]
    assert 0 < len(accepted) < len(queries)  # the knn tier answered some, escalated the rest
    assert all(reply.trace.attempts[0].tier == "knn" for reply in replies)
    for query, reply in accepted:
        assert reply.text == knn.answer(generator_pb2.GenerateRequest(prompt=query, choices=CHOICES)).text
