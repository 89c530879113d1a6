"""The router's speculative stage on real nodes running tiny models: a long request reaches the
verify tier through the draft tier and gets the verify tier's own answer, what each tier did is
priced and traced, a verifier the draft node cannot reach falls back to the verify tier alone,
and a pair whose tokenizers differ is refused when the policy loads."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest
import yaml

from tests.support.aio import BackgroundLoop
from tests.support.ports import free_port
from tierlm.client import Client
from tierlm.edge.server import SpeculationConfig, load_generator, start_edge
from tierlm.edge.speculative.client import VerifierEndpoint
from tierlm.edge.tiny import build_model, build_tokenizer
from tierlm.errors import ConfigError
from tierlm.router.serve.server import start_router, stop_router
from tierlm.serving import ServerConfig
from tierlm.v1 import generator_pb2, generator_pb2_grpc, router_pb2

DRAFT_COST = {"per_input_token": 1e-9, "per_output_token": 1e-8}
VERIFY_COST = {"per_call": 1e-6, "per_input_token": 1e-7, "per_output_token": 1e-6}
MIN_MAX_TOKENS = 8
PROMPT = "Gold prices fell sharply after the central bank raised rates and investors"


@pytest.fixture(scope="module")
def loop():
    background = BackgroundLoop()
    yield background
    background.close()


@pytest.fixture(scope="module")
def draft_dir(tmp_path_factory) -> Path:
    """Another random gemma3 model with the verifier's tokenizer: a poor but honest drafter."""
    path = tmp_path_factory.mktemp("draft")
    build_model(path, "gemma3", seed=1)
    return path


def _node(loop, model_dir: Path, name: str, speculation: SpeculationConfig):
    generator = load_generator(model_dir, name, 1, 2, 8, speculation)
    return loop.run(start_edge(generator, ServerConfig())), generator


def _stop(loop, server, generator) -> None:
    loop.run(server.stop(grace_s=0))
    generator.engine.close(drain=False)
    loop.run(generator.aclose_speculation())


@pytest.fixture(scope="module")
def nodes(loop, gemma_dir, draft_dir):
    """The verify node, a draft node drafting for it, and a draft node whose verifier is gone."""
    verify = _node(loop, gemma_dir, "cloud", SpeculationConfig(verify_sessions=4))
    drafting = _node(loop, draft_dir, "edge", SpeculationConfig(VerifierEndpoint(f"127.0.0.1:{verify[0].port}", 10.0)))
    stranded = _node(loop, draft_dir, "edge", SpeculationConfig(VerifierEndpoint(f"127.0.0.1:{free_port()}", 1.0)))
    yield verify, drafting, stranded
    for node in (stranded, drafting, verify):
        _stop(loop, *node)


def _policy(path: Path, draft_port: int, verify_port: int, draft_model: Path, verify_model: Path) -> Path:
    path.write_text(yaml.safe_dump({
        "tiers": [
            {"name": "edge", "address": f"127.0.0.1:{draft_port}", "model": str(draft_model), "cost": DRAFT_COST},
            {"name": "cloud", "address": f"127.0.0.1:{verify_port}", "model": str(verify_model), "cost": VERIFY_COST,
             "timeout_s": 30.0},
        ],
        "cascade": {"order": ["cloud"]},
        "speculative": {"draft": "edge", "verify": "cloud", "k": 3, "max_k": 6, "min_max_tokens": MIN_MAX_TOKENS},
    }))
    return path


@pytest.fixture
def router_for(loop, tmp_path):
    started = []

    def start(policy: Path) -> str:
        router, service = loop.run(start_router(policy, ServerConfig(), tmp_path / "ledger.sqlite", auth=False))
        started.append((router, service))
        return f"127.0.0.1:{router.port}"

    yield start
    for router, service in started:
        loop.run(stop_router(router, service, grace_s=0))


def _alone(verify_port: int, max_tokens: int) -> generator_pb2.GenerateResponse:
    with grpc.insecure_channel(f"127.0.0.1:{verify_port}") as channel:
        stub = generator_pb2_grpc.GeneratorStub(channel)
        return stub.Generate(generator_pb2.GenerateRequest(prompt=PROMPT, max_tokens=max_tokens), timeout=60)


def test_a_long_request_gets_the_verify_tiers_answer_through_the_draft_tier(nodes, router_for, gemma_dir, draft_dir, tmp_path):
    (verify, _), (drafting, _), _ = nodes
    address = router_for(_policy(tmp_path / "p.yaml", drafting.port, verify.port, draft_dir, gemma_dir))
    alone = _alone(verify.port, 24)
    with Client(address) as client:
        answer = client.complete(PROMPT, max_tokens=24)
        short = client.complete(PROMPT, max_tokens=MIN_MAX_TOKENS)
    assert answer.text == alone.text and answer.tier == "cloud"
    (attempt,) = answer.trace.attempts
    assert attempt.tier == "cloud" and attempt.outcome == router_pb2.TIER_OUTCOME_ACCEPTED
    stats = attempt.speculative.stats
    assert attempt.speculative.draft_tier == "edge" and not attempt.speculative.fallback_tier
    assert stats.rounds > 0 and 0 < stats.accepted_tokens <= stats.drafted_tokens < stats.verifier_tokens
    # Each tier priced for what it did: the drafter for the prompt and its drafts, the verifier
    # for every token it ran (as input) and one chosen token per round.
    prompt_tokens = answer.prompt_tokens
    want = (DRAFT_COST["per_input_token"] * prompt_tokens + DRAFT_COST["per_output_token"] * stats.drafted_tokens
            + VERIFY_COST["per_call"] + VERIFY_COST["per_input_token"] * stats.verifier_tokens
            + VERIFY_COST["per_output_token"] * stats.rounds)
    assert attempt.cost == pytest.approx(want) and answer.trace.total_cost == pytest.approx(want)
    # At the threshold a request calls the verify tier directly.
    (direct,) = short.trace.attempts
    assert direct.tier == "cloud" and not direct.HasField("speculative")


def test_a_draft_tier_that_cannot_reach_its_verifier_falls_back_to_the_verify_tier(nodes, router_for, gemma_dir, draft_dir, tmp_path):
    (verify, _), _, (stranded, _) = nodes
    address = router_for(_policy(tmp_path / "p.yaml", stranded.port, verify.port, draft_dir, gemma_dir))
    with Client(address) as client:
        answer = client.complete(PROMPT, max_tokens=24)
    assert answer.text == _alone(verify.port, 24).text and answer.tier == "cloud"
    failed, fallback = answer.trace.attempts
    assert failed.outcome == router_pb2.TIER_OUTCOME_FAILED and "verifier" in failed.reason
    assert failed.speculative.draft_tier == "edge" and failed.speculative.fallback_tier == "cloud"
    assert fallback.tier == "cloud" and fallback.outcome == router_pb2.TIER_OUTCOME_ACCEPTED
    assert "answered alone after speculation failed" in fallback.reason


def test_a_pair_whose_tokenizers_differ_is_refused_when_the_policy_loads(loop, gemma_dir, tmp_path):
    other = tmp_path / "other-tokenizer"
    build_tokenizer(other, vocab_size=320)  # the same training text, a smaller vocabulary
    policy = _policy(tmp_path / "p.yaml", free_port(), free_port(), other, gemma_dir)
    with pytest.raises(ConfigError, match="tokenize differently"):
        loop.run(start_router(policy, ServerConfig(), tmp_path / "ledger.sqlite", auth=False))
