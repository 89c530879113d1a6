"""The MiniLM probe: a cross-fitted linear classifier, and the tier that serves it."""

from __future__ import annotations

import asyncio

import grpc
import numpy as np
import pytest

from tierlm.config import IN_ROUTER_MODELS
from tierlm.errors import GenerationError
from tierlm.router.nollm.models import NO_LLM_MODELS
from tierlm.router.nollm.probe import LinearProbe
from tierlm.router.nollm.probe_tier import ProbeGenerator
from tierlm.v1 import generator_pb2

from tests.support.workloads import row

CHOICES = [" up", " down", " neutral", " none"]
WORDS = {"up": ["rises", "climbs", "gains"], "down": ["falls", "slips", "drops"],
         "neutral": ["steady", "flat", "unchanged"], "none": ["reviews", "duty", "mining"]}


def pool(per_label: int = 8):
    rows = []
    for label, words in WORDS.items():
        for i in range(per_label):
            rows.append(row(f"{label}{i}", f"gold {words[i % 3]} item{label}{i}", label))
    return rows


def test_probabilities_follow_the_label_order_and_learn_the_signal(hashing_encoder) -> None:
    rows = pool()
    labels = ("none", "up", "down", "neutral")
    probe = LinearProbe(hashing_encoder.encode([e.query for e in rows]), [e.label for e in rows], labels=labels)
    probs = probe.probabilities(hashing_encoder.encode(["gold climbs higher", "gold drops again"]))
    assert probs.shape == (2, 4) and np.allclose(probs.sum(axis=1), 1.0)
    assert labels[probs[0].argmax()] == "up" and labels[probs[1].argmax()] == "down"


def test_a_pool_row_is_answered_by_a_model_that_never_saw_it() -> None:
    """Random labels on random vectors: the full model memorises its pool (near-perfect in-sample
    accuracy), the fold models answering each row's own query are at chance."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 64))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    y = [str(v) for v in rng.integers(0, 4, size=200)]
    probe = LinearProbe(x, y, c=100.0, folds=5)
    labels = np.array(probe.labels)
    in_sample = np.mean(labels[probe.probabilities(x).argmax(axis=1)] == y)
    held_out = np.mean(labels[probe.probabilities(x, exclude=range(200)).argmax(axis=1)] == y)
    assert in_sample > 0.6 and held_out < 0.4, (in_sample, held_out)


def test_too_few_rows_per_label_is_refused() -> None:
    with pytest.raises(ValueError, match="folds"):
        LinearProbe(np.eye(6), ["a", "a", "a", "b", "b", "b"], folds=5)


def test_the_tier_answers_label_choices_with_log_probabilities(hashing_encoder) -> None:
    tier = ProbeGenerator(hashing_encoder, pool(), tier_name="probe")
    reply = asyncio.run(tier.generate(generator_pb2.GenerateRequest(prompt="gold rises, climbs, gains", choices=CHOICES)))
    scores = {c.choice: c.logprob for c in reply.choice_logprobs}
    assert reply.text == " up" == max(scores, key=scores.get)
    assert reply.model == "minilm-probe" and reply.tier == "probe"
    assert np.isclose(np.exp(list(scores.values())).sum(), 1.0)
    with pytest.raises(GenerationError) as err:
        tier.answer(generator_pb2.GenerateRequest(prompt="gold", choices=[" sideways"]))
    assert err.value.code == grpc.StatusCode.INVALID_ARGUMENT


def test_policies_name_both_no_llm_tiers() -> None:
    # The policy schema (below the router) lists the same names for `in_router` tiers.
    assert set(NO_LLM_MODELS) == {"knn-vote", "minilm-probe"} == set(IN_ROUTER_MODELS)
