"""knn-vote as a Generator tier."""

from __future__ import annotations

import asyncio

import grpc
import pytest

from tierlm.errors import GenerationError
from tierlm.router.nollm.knn_tier import KnnGenerator
from tierlm.v1 import generator_pb2

from tests.support.workloads import row

POOL = [
    row("1", "gold rises on weak dollar", "up"),
    row("2", "gold rises as stocks slip", "up"),
    row("3", "gold rises to record", "up"),
    row("4", "gold falls on strong dollar", "down"),
    row("5", "gold falls as yields climb", "down"),
    row("6", "gold falls to two-week low", "down"),
    row("7", "india reviews import duty", "none"),
]
CHOICES = [" up", " down", " neutral", " none"]


def test_neighbours_vote_and_the_query_never_votes_for_itself(hashing_encoder):
    knn = KnnGenerator(hashing_encoder, POOL, k=3)
    reply = asyncio.run(knn.generate(generator_pb2.GenerateRequest(prompt="gold rises sharply", choices=CHOICES)))
    assert reply.text == " up" and reply.finish_reason == generator_pb2.FINISH_REASON_CHOICE
    scores = {c.choice: c.logprob for c in reply.choice_logprobs}
    assert scores[" up"] == max(scores.values()) > scores[" neutral"]
    # The only "none" row is the query itself: left out, it cannot vote for its own label.
    own = knn.answer(generator_pb2.GenerateRequest(prompt="India reviews  import duty", choices=CHOICES))
    own_scores = {c.choice: c.logprob for c in own.choice_logprobs}
    assert own.text != " none" and own_scores[" none"] == own_scores[" neutral"] == min(own_scores.values())


def test_unknown_labels_are_invalid(hashing_encoder):
    knn = KnnGenerator(hashing_encoder, POOL, k=3)
    with pytest.raises(GenerationError) as err:
        knn.answer(generator_pb2.GenerateRequest(prompt="gold", choices=[" sideways"]))
    assert err.value.code == grpc.StatusCode.INVALID_ARGUMENT


def test_served_tier_breaks_ties_as_the_offline_vote_does(hashing_encoder):
    """Two neighbours, one per label: the vote ties and the more similar neighbour's label wins,
    in the served tier exactly as in the offline knn-vote reference (KnnVote)."""
    from tierlm.router.nollm.knn import KnnVote

    pool = [row("a", "gold falls", "down"), row("b", "gold rises sharply today", "up"), row("c", "silver flat", "neutral")]
    knn = KnnGenerator(hashing_encoder, pool, k=2)
    for query in ("gold falls hard", "gold rises"):  # the first ties on a down neighbour that is nearer
        served = knn.answer(generator_pb2.GenerateRequest(prompt=query, choices=CHOICES)).text.strip()
        (offline,) = KnnVote(knn.pool_embeddings, [r.label for r in pool], k=2, labels=knn.labels).predict(
            hashing_encoder.encode([query])
        )
        assert served == offline.label
        assert offline.votes[offline.label] == 1  # a tie, decided by similarity


def test_without_choices_the_tier_answers_among_its_labels(hashing_encoder):
    knn = KnnGenerator(hashing_encoder, POOL, k=3)
    reply = knn.answer(generator_pb2.GenerateRequest(prompt="gold rises sharply"))
    assert reply.text == "up" and {c.choice for c in reply.choice_logprobs} == {"up", "down", "neutral", "none"}
