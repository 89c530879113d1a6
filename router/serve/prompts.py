"""Prompt adaptation at serve time: each tier with a prompt strategy gets a prompt of its own.

The client sends the bare query (or one already wrapped in a strategy's query block, which is
unwrapped); for a tier with a strategy, the router renders the tier's instruction and
demonstrations around it and asks for label-choice scoring (or a bounded generation), exactly
as collection did when the tier's answers were measured. Retrieval reads the request's shared
query embedding (:class:`~tierlm.router.serve.query.RequestQuery`).
"""

from __future__ import annotations

from collections.abc import Mapping
from contextlib import nullcontext

from tierlm.config import Policy, PromptStrategy
from tierlm.router.embeddings import CachingEncoder, Similarities
from tierlm.router.prompting import PromptBuilder, query_pattern, request_query
from tierlm.router.serve.query import RequestQuery
from tierlm.router.workload import load_workload
from tierlm.v1 import generator_pb2


def needs_encoder(policy: Policy) -> bool:
    """Whether serving the policy embeds queries (a learned scorer or a retrieved prompt)."""
    return policy.scorer is not None or any(t.prompt and t.prompt.selection == "retrieved" for t in policy.tiers)


class TierPrompts:
    """Per-tier request rewriting for the tiers whose policy entry has a `prompt` strategy."""

    def __init__(self, builders: Mapping[str, PromptBuilder]):
        self._builders = dict(builders)
        self._wrappers = list(dict.fromkeys(query_pattern(b.strategy.template) for b in self._builders.values()))

    @classmethod
    def from_policy(cls, policy: Policy, encoder: CachingEncoder | None) -> TierPrompts:
        """One builder per distinct strategy: tiers that share one (the demo's edge and cloud)
        share its demonstrations, retrieved once per request."""
        strategies = {t.name: t.prompt for t in policy.tiers if t.prompt is not None}
        pool = list(load_workload(policy.pool)) if policy.pool is not None else []
        distinct: list[tuple[PromptStrategy, PromptBuilder]] = []
        # The pool's embeddings come from the disk cache after the first start (a 5,000-row
        # pool takes seconds to embed); queries never touch it.
        with encoder.caching() if encoder is not None else nullcontext():
            for strategy in strategies.values():
                if not any(strategy == known for known, _ in distinct):
                    distinct.append((strategy, PromptBuilder(strategy, pool, encoder=encoder)))
        return cls({name: next(b for known, b in distinct if known == strategy) for name, strategy in strategies.items()})

    @property
    def pools(self) -> tuple[Similarities, ...]:
        """The retrieval pools of the tiers' strategies, each once: a request's query is compared
        with them when it is embedded (RequestQuery's ``compare``)."""
        indexes = (builder.pool_index for builder in self._builders.values())
        return tuple({id(index): index for index in indexes if index is not None}.values())

    def query_text(self, request: generator_pb2.GenerateRequest) -> str:
        """The query a strategy wraps: the prompt without a strategy's query block around it, or
        the chat's last user turn."""
        query = request_query(request)
        for wrapper in self._wrappers if request.WhichOneof("input") == "prompt" else ():
            match = wrapper.fullmatch(query)
            if match:
                return match.group(1)
        return query

    def rewrite(
        self, tier: str, request: generator_pb2.GenerateRequest, query: RequestQuery
    ) -> generator_pb2.GenerateRequest:
        builder = self._builders.get(tier)
        if builder is None or request.WhichOneof("input") != "prompt":
            return request
        strategy = builder.strategy
        rewritten = generator_pb2.GenerateRequest()
        rewritten.CopyFrom(request)
        prompt = query.prompts.get(id(builder))
        if prompt is None:
            embedding = query.embedding() if strategy.selection == "retrieved" else None
            prompt = query.prompts[id(builder)] = builder.build_prompt(
                query.text, query_embedding=embedding, similarity=query.similarity(builder.pool_index))
        rewritten.prompt = prompt
        if strategy.labels:
            del rewritten.choices[:]
            rewritten.choices.extend(strategy.label_continuations)
            rewritten.max_tokens = max(rewritten.max_tokens, 1)
        elif not rewritten.choices:
            rewritten.max_tokens = rewritten.max_tokens or strategy.max_tokens
            if not rewritten.stop:
                rewritten.stop.extend(strategy.stop)
        return rewritten
