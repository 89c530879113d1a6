"""Prompt adaptation at serve time: each tier with a prompt strategy gets a prompt of its own.

The client sends the bare query (or a "Q: ...\\nA:" tail); for a tier with a strategy, the
router renders the tier's instruction and demonstrations around it and asks for label-choice
scoring, exactly as collection did when the tier's answers were measured. The query's
embedding is computed once per request and shared by retrieval and the learned scorer.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from contextlib import nullcontext

from tierlm.config import Policy
from tierlm.router.datasets import parse_query
from tierlm.router.prompting import PromptBuilder
from tierlm.v1 import generator_pb2


def query_of(request: generator_pb2.GenerateRequest) -> str:
    """The query a strategy wraps: the prompt, without a "Q: ...\\nA:" wrapper if it has one."""
    try:
        return parse_query(request.prompt)
    except ValueError:
        return request.prompt


class TierPrompts:
    """Per-tier request rewriting for the tiers whose policy entry has a `prompt` strategy."""

    def __init__(self, builders: Mapping[str, PromptBuilder], encoder=None):
        self._builders = dict(builders)
        self.encoder = encoder

    @classmethod
    def from_policy(cls, policy: Policy) -> TierPrompts:
        from tierlm.router.tier_setup import prompt_builder

        strategies = {t.name: t for t in policy.tiers if t.prompt is not None}
        encoder = None
        if any(t.prompt.selection == "retrieved" for t in strategies.values()):
            from tierlm.router.embeddings import Encoder

            encoder = Encoder(threads=1)
        # The pools' embeddings come from the disk cache after the first start (the 5,000-row
        # HEADLINES pool takes minutes to embed on one core); queries never touch it.
        with encoder.caching() if encoder is not None else nullcontext():
            builders = {name: prompt_builder(tier, encoder) for name, tier in strategies.items()}
        return cls(builders, encoder)

    def __bool__(self) -> bool:
        return bool(self._builders)

    def rewrite(self, tier: str, request: generator_pb2.GenerateRequest, embedding=None) -> generator_pb2.GenerateRequest:
        builder = self._builders.get(tier)
        if builder is None or request.WhichOneof("input") != "prompt":
            return request
        rewritten = generator_pb2.GenerateRequest()
        rewritten.CopyFrom(request)
        rewritten.prompt = builder.build_prompt(query_of(request), query_embedding=embedding)
        del rewritten.choices[:]
        rewritten.choices.extend(builder.strategy.label_continuations)
        rewritten.max_tokens = max(rewritten.max_tokens, 1)
        return rewritten


class LearnedScorer:
    """The trained scorer behind the cascade's AnswerScorer interface."""

    def __init__(self, scorer):
        self._scorer = scorer

    def score(self, query: str, answer: generator_pb2.GenerateResponse, tier: str) -> float:
        labels = {c.choice.strip(): c.logprob for c in answer.choice_logprobs} or None
        value = self._scorer.score(
            query, answer.text.strip(), tier, [t.logprob for t in answer.logprobs], labels
        )
        return 0.0 if math.isnan(value) else value
