"""Prompt adaptation at serve time: each tier with a prompt strategy gets a prompt of its own.

The client sends the bare query (or one already wrapped in a strategy's query block, which is
unwrapped); for a tier with a strategy, the router renders the tier's instruction and
demonstrations around it and asks for label-choice scoring (or a bounded generation), exactly
as collection did when the tier's answers were measured. Retrieval reads the request's shared
query embedding (:class:`~tierlm.router.serve.query.RequestQuery`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from tierlm.config import Policy, PromptStrategy
from tierlm.router.embeddings import CachingEncoder, Similarities
from tierlm.router.prompting import Labelled, PromptBuilder, query_pattern, request_query
from tierlm.router.serve.query import RequestQuery
from tierlm.router.workload import load_workload
from tierlm.v1 import generator_pb2


def needs_encoder(policy: Policy) -> bool:
    """Whether serving the policy embeds queries (a learned scorer, a retrieved prompt, or a tier
    the router answers from the embedding)."""
    return policy.scorer is not None or _compares_with_pool(policy)


def _compares_with_pool(policy: Policy) -> bool:
    return any((t.prompt and t.prompt.selection == "retrieved") or t.in_router for t in policy.tiers)


def policy_pool(policy: Policy) -> list[Labelled]:
    """The policy's labelled pool rows (none without a pool)."""
    return list(load_workload(policy.pool)) if policy.pool is not None else []


def pool_index(policy: Policy, pool: Sequence[Labelled], encoder: CachingEncoder | None) -> Similarities | None:
    """One similarity index over the pool's embeddings for everything that compares a query
    with the pool (retrieval of every strategy, in-router tiers), or None if nothing does.
    The embeddings come from the disk cache after the first start (a 5,000-row pool takes
    seconds to embed); queries never touch it."""
    if encoder is None or not _compares_with_pool(policy):
        return None
    with encoder.caching():
        return Similarities(encoder.encode([row.query for row in pool]))


class TierPrompts:
    """Per-tier request rewriting for the tiers whose policy entry has a `prompt` strategy."""

    def __init__(self, builders: Mapping[str, PromptBuilder]):
        self._builders = dict(builders)
        self._wrappers = list(dict.fromkeys(query_pattern(b.strategy.template) for b in self._builders.values()))

    @classmethod
    def from_policy(cls, policy: Policy, pool: Sequence[Labelled], index: Similarities | None) -> TierPrompts:
        """One builder per distinct strategy over ``pool`` (retrieving through ``index``, see
        :func:`pool_index`): tiers that share one (the demo's edge and cloud) share its
        demonstrations, retrieved once per request."""
        strategies = {t.name: t.prompt for t in policy.tiers if t.prompt is not None}
        distinct: list[tuple[PromptStrategy, PromptBuilder]] = []
        for strategy in strategies.values():
            if not any(strategy == known for known, _ in distinct):
                retrieves = strategy.selection == "retrieved"
                distinct.append((strategy, PromptBuilder(strategy, pool, pool_index=index if retrieves else None)))
        return cls({name: next(b for known, b in distinct if known == strategy) for name, strategy in strategies.items()})

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
