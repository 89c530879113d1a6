"""Judging a tier's answer at serve time: P(correct) from the learned scorer, or the tier's own
confidence when the policy names no scorer."""

from __future__ import annotations

import math
from typing import Protocol

from tierlm.config import Policy
from tierlm.router.embeddings import TextEncoder
from tierlm.router.learn.features import own_confidence
from tierlm.router.learn.scorer import Scorer
from tierlm.router.serve.query import RequestQuery
from tierlm.v1 import generator_pb2


class AnswerScorer(Protocol):
    """P(answer is correct) for a tier's answer to a query."""

    def score(self, query: RequestQuery, answer: generator_pb2.GenerateResponse, tier: str) -> float: ...


class ConfidenceScorer:
    """The scorer used when the policy names none: the tier's own confidence.

    With label-choice answers, the softmax probability of the chosen label; otherwise the
    geometric mean of the generated tokens' probabilities.
    """

    def score(self, query: RequestQuery, answer: generator_pb2.GenerateResponse, tier: str) -> float:
        labels = {c.choice: c.logprob for c in answer.choice_logprobs} or None
        return own_confidence([t.logprob for t in answer.logprobs], labels)


class LearnedScorer:
    """The trained scorer behind :class:`AnswerScorer`, reading the request's shared query embedding."""

    def __init__(self, scorer: Scorer):
        self._scorer = scorer
        self._uses_query_embedding = scorer.text_features == "separate"

    def score(self, query: RequestQuery, answer: generator_pb2.GenerateResponse, tier: str) -> float:
        labels = {c.choice.strip(): c.logprob for c in answer.choice_logprobs} or None
        value = self._scorer.score(
            query.text, answer.text.strip(), tier, [t.logprob for t in answer.logprobs], labels,
            query_embedding=query.embedding() if self._uses_query_embedding else None,
        )
        return 0.0 if math.isnan(value) else value


def load_scorer(policy: Policy, encoder: TextEncoder | None) -> AnswerScorer:
    """The policy's scorer; a learned one needs the router's sentence encoder."""
    if policy.scorer is None:
        return ConfidenceScorer()
    if encoder is None:
        raise ValueError("a learned scorer needs the sentence encoder")
    return LearnedScorer(Scorer.load(policy.scorer.path, encoder))
