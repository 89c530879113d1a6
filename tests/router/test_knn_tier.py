"""knn-vote as a Generator tier."""

from __future__ import annotations

import asyncio

import grpc
import pytest

from tierlm.errors import GenerationError
from tierlm.router.datasets import Example
from tierlm.router.embedding_tier import last_query
from tierlm.router.knn_tier import KnnGenerator
from tierlm.v1 import generator_pb2

POOL = [
    Example("1", "gold rises on weak dollar", "up"),
    Example("2", "gold rises as stocks slip", "up"),
    Example("3", "gold rises to record", "up"),
    Example("4", "gold falls on strong dollar", "down"),
    Example("5", "gold falls as yields climb", "down"),
    Example("6", "gold falls to two-week low", "down"),
    Example("7", "india reviews import duty", "none"),
]
CHOICES = [" up", " down", " neutral", " none"]


def test_last_query_takes_the_final_block():
    assert last_query("Say.\n\nQ: a\nA: up\n\nQ: gold rises\nA:") == "gold rises"
    assert last_query("plain text") == "plain text"


def test_neighbours_vote_and_the_query_never_votes_for_itself(hashing_encoder):
    knn = KnnGenerator(hashing_encoder, POOL, k=3)
    reply = asyncio.run(knn.generate(generator_pb2.GenerateRequest(prompt="Q: gold rises sharply\nA:", choices=CHOICES)))
    assert reply.text == " up" and reply.finish_reason == generator_pb2.FINISH_REASON_CHOICE
    scores = {c.choice: c.logprob for c in reply.choice_logprobs}
    assert scores[" up"] == max(scores.values()) > scores[" neutral"]
    # The only "none" row is the query itself: left out, it cannot vote for its own label.
    own = knn.answer(generator_pb2.GenerateRequest(prompt="Q: India reviews  import duty\nA:", choices=CHOICES))
    own_scores = {c.choice: c.logprob for c in own.choice_logprobs}
    assert own.text != " none" and own_scores[" none"] == own_scores[" neutral"] == min(own_scores.values())


def test_unknown_labels_are_invalid(hashing_encoder):
    knn = KnnGenerator(hashing_encoder, POOL, k=3)
    with pytest.raises(GenerationError) as err:
        knn.answer(generator_pb2.GenerateRequest(prompt="gold", choices=[" sideways"]))
    assert err.value.code == grpc.StatusCode.INVALID_ARGUMENT
