"""The learned serving path with the real MiniLM encoder: a scorer trained here, retrieved prompts
from the policy's pool, one encoder per router and one query embedding per request."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest
import yaml

from tierlm.config import load_policy
from tierlm.router.learn.records import AnswerRecord
from tierlm.router.learn.scorer import Scorer, train
from tierlm.router.prompting import PromptBuilder
from tierlm.router.serve.cascade import CascadeRunner, plan
from tierlm.router.serve.batcher import EncodeBatcher
from tierlm.router.serve.breaker import CircuitBreaker
from tierlm.router.serve.prompts import TierPrompts, policy_pool, pool_index
from tierlm.router.serve.query import RequestQuery
from tierlm.router.serve.scoring import LearnedScorer, load_scorer
from tierlm.router.workload import load_workload, write_workload
from tierlm.v1 import generator_pb2, router_pb2

from tests.support.workloads import LABELS, headlines

pytestmark = pytest.mark.slow  # MiniLM embeds a few hundred texts and the scorer cross-validates: ~30 s


class Counting:
    """Counts the encoder's calls, passing them through to the real one."""

    def __init__(self, encoder):
        self._encoder = encoder
        self.model_id = encoder.model_id
        self.texts: list[str] = []

    def encode(self, texts):
        self.texts += list(texts)
        return self._encoder.encode(texts)

    def caching(self, cache=None):
        return self._encoder.caching(cache)


def records(rows, rng) -> list[AnswerRecord]:
    out = []
    for row in rows:
        for tier, skill in (("edge", 0.6), ("cloud", 0.9)):
            right = rng.random() < skill
            answer = row.label if right else LABELS[(LABELS.index(row.label) + 1) % 4]
            logprobs = {label: (-0.2 if label == answer else -2.0) for label in LABELS}
            out.append(AnswerRecord(row.query, answer, tier, (), logprobs, right, row.id, 1e-6))
    return out


@pytest.fixture(scope="module")
def setup(tmp_path_factory, minilm):
    folder = tmp_path_factory.mktemp("learned")
    rows = list(headlines("train"))
    write_workload([r.model_dump() for r in rows[:60]], folder / "pool.jsonl")
    scorer = train(records(rows[60:120], np.random.default_rng(0)), minilm, split="train")
    scorer.save(folder / "scorer")
    prompt = {"selection": "retrieved", "k": 3, "instruction": "Direction?", "labels": list(LABELS)}
    tiers = [{"name": n, "address": "127.0.0.1:1", "prompt": prompt} for n in ("edge", "cloud")]
    (folder / "policy.yaml").write_text(yaml.safe_dump({
        "tiers": tiers, "pool": str(folder / "pool.jsonl"), "scorer": {"path": str(folder / "scorer")},
        "cascade": {"order": ["edge", "cloud"], "thresholds": {"edge": 0.99}},
    }))
    return folder


def test_the_learned_scorer_scores_like_the_trained_model(setup, minilm) -> None:
    policy = load_policy(setup / "policy.yaml")
    batcher = EncodeBatcher(minilm)
    served = load_scorer(policy, batcher)
    assert isinstance(served, LearnedScorer)
    answer = generator_pb2.GenerateResponse(
        text=" up", choice_logprobs=[generator_pb2.ChoiceLogprob(choice=f" {label}", logprob=-0.2 if label == "up" else -2.0)
                                     for label in LABELS])
    expected = Scorer.load(setup / "scorer", minilm).score(
        "gold climbs on a weaker dollar", "up", "edge", (), {label: -0.2 if label == "up" else -2.0 for label in LABELS})

    async def serve_one() -> float:
        return await served.score(RequestQuery("gold climbs on a weaker dollar", batcher.embed), answer, "edge")

    assert asyncio.run(serve_one()) == pytest.approx(expected, abs=1e-6)
    with pytest.raises(ValueError, match="encoder"):
        load_scorer(policy, None)
    batcher.close()


def test_retrieval_and_the_scorer_share_one_embedding_per_request(setup, minilm) -> None:
    policy = load_policy(setup / "policy.yaml")
    encoder = Counting(minilm)
    pool = policy_pool(policy)
    index = pool_index(policy, pool, encoder)
    prompts = TierPrompts.from_policy(policy, pool, index)
    batcher = EncodeBatcher(encoder)
    scorer = load_scorer(policy, batcher)
    pool_texts = len(encoder.texts)

    class Echo:
        def __init__(self):
            self.prompts: list[str] = []

        async def generate(self, request, remaining_s):
            self.prompts.append(request.prompt)
            return generator_pb2.GenerateResponse(
                text=request.choices[0], is_final=True, usage=generator_pb2.Usage(prompt_tokens=9, completion_tokens=1),
                choice_logprobs=[generator_pb2.ChoiceLogprob(choice=c, logprob=-1.0) for c in request.choices])

    edge, cloud = Echo(), Echo()
    runner = CascadeRunner(
        {"edge": edge, "cloud": cloud}, {"edge": CircuitBreaker(5, 1.0), "cloud": CircuitBreaker(5, 1.0)}, scorer,
        rewrite=prompts.rewrite,
        query_of=lambda request: RequestQuery(prompts.query_text(request), compare=batcher.embed_compared, pools=(index,)),
    )
    request = generator_pb2.GenerateRequest(prompt="Q: gold climbs on a weaker dollar\nA:", max_tokens=1)
    cascade_plan = plan(policy, router_pb2.RoutingOptions(), None)

    async def route() -> router_pb2.RoutingTrace:
        routed = await runner.prepare(request, cascade_plan)
        await runner.complete(routed, cascade_plan, None)
        return routed.trace

    trace = asyncio.run(route())
    batcher.close()
    assert [a.tier for a in trace.attempts] == ["edge", "cloud"]  # edge scored below 0.99: escalated
    embedded = encoder.texts[pool_texts:]  # the query, unwrapped, once; and the answer's text, once
    assert embedded.count("gold climbs on a weaker dollar") == 1 and len(embedded) == 2
    assert edge.prompts[0].startswith("Direction?\n\nQ: ") and edge.prompts[0].endswith("Q: gold climbs on a weaker dollar\nA:")
    assert edge.prompts[0].count("\nA: ") == 3  # three retrieved demonstrations
    assert cloud.prompts == edge.prompts  # one strategy, one retrieval for both tiers
    # The similarities that came with the batch retrieve what the builder retrieves by itself.
    builder = PromptBuilder(policy.tier("edge").prompt, list(load_workload(policy.pool)), encoder=minilm)
    assert edge.prompts[0] == builder.build_prompt("gold climbs on a weaker dollar")


def test_a_router_builds_one_encoder_for_retrieval_and_scoring(setup, monkeypatch, tmp_path) -> None:
    from tierlm.router import onnx_encoder
    from tierlm.router.serve import server
    from tierlm.router.store.sqlite import SqliteStore

    built = []
    real = onnx_encoder.OnnxEncoder
    monkeypatch.setattr(onnx_encoder, "OnnxEncoder", lambda **kwargs: built.append(kwargs) or real(**kwargs))

    async def start() -> None:
        service = server.RouterService(setup / "policy.yaml", SqliteStore(tmp_path / "ledger.sqlite"))
        assert service.reload()  # a reload reuses the router's encoder
        service.close()
        await service.store.close()

    asyncio.run(start())
    assert built == [{"threads": 1}, {"precision": "float32", "threads": 1}]  # int8, and float32 near thresholds


def test_a_static_policy_serves_with_its_own_table_and_no_minilm(setup, monkeypatch, tmp_path) -> None:
    from tierlm.router import onnx_encoder
    from tierlm.router.serve import server
    from tierlm.router.static_encoder import StaticEncoder
    from tierlm.router.store.sqlite import SqliteStore

    rows = list(headlines("train"))
    static = StaticEncoder.for_pool([row.query for row in load_workload(setup / "pool.jsonl")])  # built once, cached
    train(records(rows[60:120], np.random.default_rng(0)), static, split="train").save(tmp_path / "scorer")
    document = yaml.safe_load((setup / "policy.yaml").read_text())
    (tmp_path / "policy.yaml").write_text(yaml.safe_dump({**document, "encoder": "static", "scorer": {"path": str(tmp_path / "scorer")}}))
    (tmp_path / "minilm-scorer.yaml").write_text(yaml.safe_dump({**document, "encoder": "static"}))
    built = []
    real = onnx_encoder.OnnxEncoder
    monkeypatch.setattr(onnx_encoder, "OnnxEncoder", lambda *args, **kwargs: built.append(kwargs) or real(*args, **kwargs))

    async def start(policy) -> None:
        service = server.RouterService(policy, SqliteStore(tmp_path / "ledger.sqlite"))
        try:
            assert service.reload()
        finally:
            service.close()
            await service.store.close()

    asyncio.run(start(tmp_path / "policy.yaml"))
    assert built == []  # retrieval and the scorer read the static table; nothing is rescored with MiniLM
    with pytest.raises(ValueError, match="trained with encoder all-MiniLM-L6-v2:[0-9a-f]+, given .*:static-v"):
        asyncio.run(start(tmp_path / "minilm-scorer.yaml"))
