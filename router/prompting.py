"""Tier prompts: which demonstrations a tier's model sees, and how its label scores are calibrated.

A tier is a model *and* a prompt strategy (FrugalGPT's prompt adaptation). On HEADLINES the
choice of demonstrations decides whether a 270M model is near chance or useful, so the policy sets, per
tier, a :class:`~tierlm.config.PromptStrategy` (what it means is documented there), and this
module builds the prompts it describes from a pool of labelled workload rows:

* ``fixed``: the first ``k`` demonstrations of a prompt file (or of the pool). Same prefix for
  every query, so a server can cache it.
* ``balanced``: ``k`` demonstrations drawn once with a fixed seed from the pool, split as evenly
  as possible across ``labels``. Also one prefix for (almost) every query.
* ``retrieved``: the ``k`` pool rows nearest to the query by sentence-embedding similarity,
  ordered most-similar *last*, next to the query, where recency bias helps most.

A demonstration is never the query itself (compared on normalised text), so evaluating a
strategy on the pool's own split does not leak labels. A prompt is the instruction, then each
demonstration as its query block (``template``) followed by a space and its answer, then the
query block::

    <instruction>\n\n<block(demo)> <answer>\n\n ... <block(query)>
"""

from __future__ import annotations

import math
import re
from itertools import islice
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from tierlm.config import PromptStrategy
from tierlm.router.embeddings import Similarities, TextEncoder
from tierlm.v1 import generator_pb2


#: Rows retrieved beyond ``k`` in case some are the query itself (see PromptBuilder._retrieve).
_RETRIEVAL_SPARES = 8


@dataclass(frozen=True)
class Demonstration:
    """One demonstration of a prompt file: a query and the answer shown after it."""

    query: str
    label: str


class Labelled(Protocol):
    """What a pool row must offer (a :class:`~tierlm.router.workload.WorkloadRow` does)."""

    @property
    def query(self) -> str: ...

    @property
    def label(self) -> str: ...


def request_query(request: generator_pb2.GenerateRequest) -> str:
    """The query of a request as sent: its prompt, or its chat's last user turn."""
    if request.WhichOneof("input") == "messages":
        users = [m.content for m in request.messages.messages if m.role == "user"]
        return users[-1] if users else ""
    return request.prompt


def render_block(template: str, query: str) -> str:
    """The query block that ends every prompt (and starts every demonstration)."""
    return template.replace("{query}", query)


def render_prompt(strategy: PromptStrategy, demos: Sequence[Labelled], query: str) -> str:
    """Instruction, demonstrations in order, then the query block."""
    parts = [f"{strategy.instruction}\n\n"] if strategy.instruction else []
    parts += [f"{render_block(strategy.template, demo.query)} {demo.label}\n\n" for demo in demos]
    parts.append(render_block(strategy.template, query))
    return "".join(parts)


def query_pattern(template: str) -> re.Pattern[str]:
    """Matches a query block rendered with ``template``; group 1 is the query."""
    prefix, _, suffix = template.partition("{query}")
    return re.compile(re.escape(prefix) + r"(.*)" + re.escape(suffix), re.DOTALL)


def parse_prompt_file(text: str, template: str) -> tuple[str, list[Demonstration]]:
    """Split a few-shot prefix file into its instruction and its demonstrations.

    Raises:
        ValueError: if a block after the instruction is not ``template`` followed by an answer.
    """
    blocks = [block for block in text.strip("\n").split("\n\n") if block]
    if not blocks:
        return "", []
    prefix, _, suffix = template.partition("{query}")
    instruction, demos = blocks[0], []
    for i, block in enumerate(blocks[1:]):
        question, sep, answer = block.partition(suffix)
        if not (sep and question.startswith(prefix)):
            raise ValueError(f"demonstration {i + 1} is not {template!r} followed by an answer: {block!r}")
        demos.append(Demonstration(question[len(prefix):], answer.strip()))
    return instruction, demos


def _same_text(a: str, b: str) -> bool:
    return " ".join(a.casefold().split()) == " ".join(b.casefold().split())


class PromptBuilder:
    """Builds a tier's prompts under a :class:`PromptStrategy`.

    Args:
        strategy: the tier's strategy.
        pool: labelled rows to draw demonstrations from (a training split); ``fixed`` uses its
            first ``k`` rows unless the strategy names a prompt file.
        encoder: the sentence encoder; needed by ``retrieved`` only.
        pool_embeddings: the pool's embeddings if already computed (row ``i`` for ``pool[i]``);
            otherwise ``retrieved`` encodes the pool once here.
        pool_index: instead of ``pool_embeddings``: the pool's similarity index, shared with
            other users of the same pool (one product per query for all of them).
    """

    def __init__(
        self,
        strategy: PromptStrategy,
        pool: Sequence[Labelled] = (),
        *,
        encoder: TextEncoder | None = None,
        pool_embeddings: np.ndarray | None = None,
        pool_index: Similarities | None = None,
    ) -> None:
        self.strategy = strategy
        self.pool = list(pool)
        self._encoder = encoder
        self._fixed: list[Labelled] = []
        self._by_label: dict[str, list[tuple[int, Labelled]]] = {}  # label -> (permutation rank, row)
        self._pool_similarity: Similarities | None = None
        if strategy.selection == "fixed":
            self._fixed = self._fixed_demonstrations(strategy.fixed_prompt)
        elif strategy.selection == "balanced":
            self._prepare_balanced()
        else:
            self._prepare_retrieval(pool_embeddings, pool_index)

    def _fixed_demonstrations(self, path: Path | None) -> list[Labelled]:
        k = self.strategy.k
        if path is None:
            if k > len(self.pool):
                raise ValueError(f"fixed k={k} takes the pool's first rows, but the pool holds {len(self.pool)}")
            return self.pool[:k]
        _, demos = parse_prompt_file(path.read_text(encoding="utf-8"), self.strategy.template)
        if k > len(demos):
            raise ValueError(f"k={k} but {path} holds only {len(demos)} demonstrations")
        return list(demos[:k])

    def _prepare_balanced(self) -> None:
        labels = self.strategy.labels
        rng = np.random.default_rng(self.strategy.seed)
        # One seeded permutation of the pool fixes both which rows each label offers first and
        # the order the chosen rows appear in, so the prefix is the same for every query except
        # the few that are themselves among the chosen rows.
        for rank, index in enumerate(rng.permutation(len(self.pool))):
            example = self.pool[index]
            if example.label in labels:
                self._by_label.setdefault(example.label, []).append((rank, example))
        for label, need in zip(labels, self._per_label_counts()):
            # One spare per label so that excluding the query never runs a label short.
            have = len(self._by_label.get(label, []))
            if have < need + 1:
                raise ValueError(
                    f"balanced k={self.strategy.k} needs {need + 1} pool rows labelled {label!r}, found {have}"
                )

    def _per_label_counts(self) -> list[int]:
        n = len(self.strategy.labels)
        base, extra = divmod(self.strategy.k, n)
        return [base + (1 if i < extra else 0) for i in range(n)]

    def _prepare_retrieval(self, pool_embeddings: np.ndarray | None, pool_index: Similarities | None) -> None:
        if self.strategy.k > len(self.pool) - 1:
            raise ValueError(f"retrieved k={self.strategy.k} needs a pool of at least {self.strategy.k + 1} rows")
        if pool_index is not None:
            if len(pool_index.rows) != len(self.pool):
                raise ValueError(f"an index of {len(pool_index.rows)} rows for {len(self.pool)} pool rows")
            self._pool_similarity = pool_index
            return
        if pool_embeddings is None:
            if self._encoder is None:
                raise ValueError("retrieved selection needs an encoder or the pool's embeddings")
            pool_embeddings = self._encoder.encode([row.query for row in self.pool])
        if pool_embeddings.shape[0] != len(self.pool):
            raise ValueError(f"{pool_embeddings.shape[0]} pool embeddings for {len(self.pool)} pool rows")
        self._pool_similarity = Similarities(pool_embeddings)

    @property
    def pool_index(self) -> Similarities | None:
        """What ``retrieved`` compares a query's embedding with (None for other selections): a
        caller may compute the similarities itself, batched, and pass them in."""
        return self._pool_similarity

    def demonstrations(
        self, query: str, query_embedding: np.ndarray | None = None, similarity: np.ndarray | None = None
    ) -> list[Labelled]:
        """The demonstrations for ``query``, in prompt order.

        Args:
            query_embedding: the query's embedding if the caller already has it (``retrieved``
                only); saves one encoder pass.
            similarity: the query's similarity to each pool row, :attr:`pool_index` applied to
                its embedding, if the caller already has it (``retrieved`` only).
        """
        strategy = self.strategy
        if strategy.selection == "fixed":
            return self._fixed[: strategy.k]
        if strategy.selection == "balanced":
            chosen: list[tuple[int, Labelled]] = []
            for label, need in zip(strategy.labels, self._per_label_counts()):
                rows = (row for row in self._by_label[label] if not _same_text(row[1].query, query))
                chosen += [next(rows) for _ in range(need)]
            return [example for _, example in sorted(chosen, key=lambda row: row[0])]
        return self._retrieve(query, query_embedding, similarity)

    def _retrieve(self, query: str, query_embedding: np.ndarray | None, similarity: np.ndarray | None) -> list[Labelled]:
        assert self._pool_similarity is not None
        if similarity is None:
            if query_embedding is None:
                if self._encoder is None:
                    raise ValueError("retrieved selection needs an encoder or the query's embedding")
                query_embedding = self._encoder.encode([query])[0]
            similarity = self._pool_similarity(np.asarray(query_embedding, dtype=np.float32))
        k = self.strategy.k
        # Only the top rows need ordering (the router does this per request): every row at least
        # as similar as the (k + spare)-th, ordered by similarity then pool position, which is
        # what a stable sort of the whole pool gives. The spares stand in for rows skipped as
        # the query itself; if too many are skipped, the whole pool is sorted after all.
        reach = min(k + _RETRIEVAL_SPARES, len(similarity))
        cutoff = np.partition(similarity, len(similarity) - reach)[len(similarity) - reach]
        candidates = np.flatnonzero(similarity >= cutoff)
        nearest = self._unlike(query, candidates[np.lexsort((candidates, -similarity[candidates]))], k)
        if len(nearest) < k:
            nearest = self._unlike(query, np.argsort(-similarity, kind="stable"), k)
        return nearest[::-1]  # most similar last, right before the query

    def _unlike(self, query: str, order: np.ndarray, k: int) -> list[Labelled]:
        """The first ``k`` pool rows in ``order`` that are not the query itself."""
        return list(islice((self.pool[i] for i in order if not _same_text(self.pool[i].query, query)), k))

    def build_prompt(
        self, query: str, query_embedding: np.ndarray | None = None, similarity: np.ndarray | None = None
    ) -> str:
        """The full prompt for ``query`` (arguments as :meth:`demonstrations`)."""
        return render_prompt(self.strategy, self.demonstrations(query, query_embedding, similarity), query)

    def content_free_prompts(self, query: str, query_embedding: np.ndarray | None = None) -> list[str]:
        """The calibration prompts for ``query``: its own demonstrations, content-free query text.

        Raises:
            ValueError: if the strategy has no calibration.
        """
        if self.strategy.calibration is None:
            raise ValueError("this strategy has no calibration")
        demos = self.demonstrations(query, query_embedding)
        return [render_prompt(self.strategy, demos, text) for text in self.strategy.calibration.content_free]


def _log_softmax(values: np.ndarray) -> np.ndarray:
    shifted = values - values.max()
    return shifted - math.log(float(np.exp(shifted).sum()))


def calibrate(
    label_logprobs: Mapping[str, float], content_free_logprobs: Sequence[Mapping[str, float]]
) -> dict[str, float]:
    """Contextual calibration of one query's label log-probs.

    With ``p`` the model's label distribution for the query (its label log-probs renormalised
    over the label set) and ``p_cf`` the mean of the label distributions it gives the
    content-free inputs, the calibrated distribution is ``q ∝ p / p_cf`` (Zhao et al.'s
    ``W = diag(p_cf)^-1``, ``b = 0``). Returned as log-probs over the labels, summing to one.
    """
    labels = list(label_logprobs)
    if not content_free_logprobs:
        raise ValueError("need at least one content-free distribution")
    p = _log_softmax(np.array([label_logprobs[label] for label in labels], dtype=np.float64))
    cf = np.mean(
        [
            np.exp(_log_softmax(np.array([row[label] for label in labels], dtype=np.float64)))
            for row in content_free_logprobs
        ],
        axis=0,
    )
    q = _log_softmax(p - np.log(cf))
    return dict(zip(labels, q.tolist()))
