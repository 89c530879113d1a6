"""Judging a tier's answer at serve time: P(correct) from the learned scorer, or the tier's own
confidence when the policy names no scorer.

Scoring is awaited: the learned scorer's text features need embeddings (the query's, shared with
retrieval, and the answer's), which are computed off the event loop and batched with other
requests' (:class:`~tierlm.router.serve.batcher.EncodeBatcher`); what runs on the loop is a
dot product.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Mapping
from typing import Protocol

import numpy as np

from tierlm.config import Policy
from tierlm.router.learn.features import joint_text, own_confidence, separate_features
from tierlm.router.learn.records import AnswerRecord
from tierlm.router.learn.scorer import Scorer
from tierlm.router.serve import telemetry
from tierlm.router.serve.batcher import EncodeBatcher
from tierlm.router.serve.query import Embed, RequestQuery
from tierlm.v1 import generator_pb2


class AnswerScorer(Protocol):
    """P(answer is correct) for a tier's answer to a query."""

    async def score(self, query: RequestQuery, answer: generator_pb2.GenerateResponse, tier: str) -> float: ...


class ConfidenceScorer:
    """The scorer used when the policy names none: the tier's own confidence.

    With label-choice answers, the softmax probability of the chosen label; otherwise the
    geometric mean of the generated tokens' probabilities.
    """

    async def score(self, query: RequestQuery, answer: generator_pb2.GenerateResponse, tier: str) -> float:
        return confidence(answer)


def confidence(answer: generator_pb2.GenerateResponse) -> float:
    """The tier's own confidence in ``answer`` (see :class:`ConfidenceScorer`)."""
    labels = {c.choice: c.logprob for c in answer.choice_logprobs} or None
    return own_confidence([t.logprob for t in answer.logprobs], labels)


class LearnedScorer:
    """The trained scorer behind :class:`AnswerScorer`.

    ``separate`` features read the request's shared query embedding and the answer's, kept per
    answer text (label sets repeat a handful of strings, so after the first requests no answer is
    embedded again); ``joint`` features embed ``query [SEP] answer`` once per answer.

    The router embeds queries with the int8 encoder, which moves a score by up to 0.016 (measured
    on the demo's dev queries). A score that lands within ``margin`` of its tier's threshold is
    therefore computed again from the query's exact (float32) embedding, so the decision is the
    one the scorer was fitted to take; the others are decided by the fast score. Answers are
    embedded exactly from the start: they repeat (label sets), so each costs one exact pass.

    Args:
        scorer: the trained scorer.
        embed: text -> embedding, off the event loop (the router's batcher).
        exact: text -> exact embedding, when ``embed`` approximates; None: ``embed`` is exact.
        thresholds: each tier's acceptance threshold (the policy's cascade).
        margin: how close to a threshold a fast score is re-scored exactly.
        answer_cache_size: answer embeddings kept (least recently used dropped first).
    """

    def __init__(
        self,
        scorer: Scorer,
        embed: Embed,
        exact: Embed | None = None,
        thresholds: Mapping[str, float] | None = None,
        margin: float = 0.03,
        answer_cache_size: int = 4096,
    ):
        self._scorer = scorer
        self._embedders = {False: embed, True: exact or embed}
        self._exact_available = exact is not None
        self._thresholds = dict(thresholds or {})
        self.margin = margin
        self._answers: OrderedDict[str, np.ndarray] = OrderedDict()  # exact embeddings by answer text
        self._answer_cache_size = answer_cache_size
        self.rescored = 0  # scores recomputed exactly (telemetry, tests)

    async def score(self, query: RequestQuery, answer: generator_pb2.GenerateResponse, tier: str) -> float:
        text = answer.text.strip()
        labels = {c.choice.strip(): c.logprob for c in answer.choice_logprobs} or None
        record = AnswerRecord(query.text, text, tier, tuple(t.logprob for t in answer.logprobs), labels)
        value = await self._score(query, record, exact=False)
        threshold = self._thresholds.get(tier)
        if self._exact_available and threshold is not None and abs(value - threshold) < self.margin:
            self.rescored += 1
            telemetry.EXACT_RESCORES.inc()
            value = await self._score(query, record, exact=True)
        return value

    async def _score(self, query: RequestQuery, record: AnswerRecord, exact: bool) -> float:
        if self._scorer.text_features == "joint":
            features = await self._embedders[exact](joint_text(record.query, record.answer))
        else:
            query_embedding = await (query.exactly_embedded() if exact else query.embedded())
            features = separate_features(np.asarray(query_embedding, dtype=np.float64)[None, :],
                                         np.asarray(await self._answer_embedding(record.answer), dtype=np.float64)[None, :])
        value = self._scorer.score_text_features(np.asarray(features, dtype=np.float64), record)
        return 0.0 if math.isnan(value) else value

    async def _answer_embedding(self, text: str) -> np.ndarray:
        embedding = self._answers.get(text)
        if embedding is None:
            embedding = self._answers[text] = await self._embedders[True](text)
            if len(self._answers) > self._answer_cache_size:
                self._answers.popitem(last=False)
        else:
            self._answers.move_to_end(text)
        return embedding


def load_scorer(policy: Policy, batcher: EncodeBatcher | None, exact: EncodeBatcher | None = None) -> AnswerScorer:
    """The policy's scorer. A learned one embeds through the router's batcher (and ``exact`` for
    scores near a threshold), whose encoder must be the one the scorer was trained with or a
    checked approximation of it."""
    if policy.scorer is None:
        return ConfidenceScorer()
    if batcher is None:
        raise ValueError("a learned scorer needs the sentence encoder")
    return LearnedScorer(Scorer.load(policy.scorer.path, batcher.encoder), batcher.embed,
                         exact.embed if exact is not None else None, policy.cascade.thresholds)
