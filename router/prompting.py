"""Tier prompt strategies: which demonstrations a tier's model sees, and how its label scores are calibrated.

A tier is a model *and* a prompt strategy (FrugalGPT's prompt adaptation). On HEADLINES the
choice of demonstrations moves a 270M model from 0.42 to 0.80 accuracy (DESIGN.md §6), so the
policy file sets, per tier, a :class:`PromptStrategy`:

* ``selection: fixed``: the first ``k`` demonstrations of a prompt file (FrugalGPT's 8-shot
  prefix by default). Same prefix for every query, so a server can cache it.
* ``selection: balanced``: ``k`` demonstrations drawn once with a fixed seed from a labelled
  pool, split as evenly as possible across ``labels``. Also one prefix for (almost) every query.
* ``selection: retrieved``: the ``k`` pool rows nearest to the query by MiniLM cosine
  similarity, ordered most-similar *last*, next to the query, where recency bias helps most.

A pool is a training split; a demonstration is never the query itself (compared on normalised
text), so evaluating a strategy on the pool's own split does not leak labels.

Prompts have the shape of the HEADLINES files::

    <instruction>\\n\\nQ: <demo>\\nA: <label>\\n\\n ... Q: <query>\\nA:
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator
from tierlm.router.datasets import LABELS, Example, headlines_dir

if TYPE_CHECKING:
    from tierlm.router.embeddings import Encoder

HEADLINES_INSTRUCTION = (
    "Please determine the price direction (up, down, neutral, or none) in the following news headlines."
)

Selection = Literal["fixed", "balanced", "retrieved"]


class Calibration(BaseModel):
    """Contextual calibration (Zhao et al., 2021) of label-choice scores.

    The tier scores each label after the real prompt and after the same prompt (same
    demonstrations) with the query replaced by each content-free string. The label
    distribution the model gives a content-free input is its bias; dividing it out is
    :func:`calibrate`. DESIGN.md §6 found this fragile on HEADLINES (it swung accuracy by up to
    0.34 with the choice of content-free string and never helped retrieved prompts), so it is
    off unless a tier's measurements on train say otherwise.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    content_free: tuple[str, ...] = Field(("N/A", "", "[MASK]"), min_length=1)


class PromptStrategy(BaseModel):
    """How one tier builds its prompt; one of these sits under each tier in the policy file."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    instruction: str = HEADLINES_INSTRUCTION
    selection: Selection = "fixed"
    k: int = Field(8, ge=0, description="number of demonstrations")
    labels: tuple[str, ...] = Field(LABELS, description="label set for balanced selection and label-choice scoring")
    calibration: Calibration | None = None
    seed: int = Field(0, description="seed of balanced selection")
    fixed_prompt: Path | None = Field(
        None, description="prompt file whose demonstrations `fixed` uses; default: the HEADLINES 8-shot file"
    )

    @model_validator(mode="after")
    def _labels_needed(self) -> PromptStrategy:
        if self.selection == "balanced" and not self.labels:
            raise ValueError("balanced selection needs a non-empty `labels` list")
        if len(set(self.labels)) != len(self.labels):
            raise ValueError(f"`labels` has duplicates: {list(self.labels)}")
        return self

    @property
    def label_continuations(self) -> tuple[str, ...]:
        """What label-choice scoring appends after the prompt's final ``"A:"``, one per label."""
        return tuple(f" {label}" for label in self.labels)


def render_query(text: str) -> str:
    """The query block that ends every prompt."""
    return f"Q: {text}\nA:"


def render_prompt(instruction: str, demos: Sequence[Example], query: str) -> str:
    """Instruction, demonstrations in order, then the query block."""
    parts = [f"{instruction}\n\n"] if instruction else []
    parts += [f"Q: {demo.headline}\nA: {demo.label}\n\n" for demo in demos]
    parts.append(render_query(query))
    return "".join(parts)


def parse_prompt_file(text: str) -> tuple[str, list[Example]]:
    """Split a few-shot prefix file into its instruction and its demonstrations.

    Raises:
        ValueError: if a block after the instruction is not ``"Q: ...\\nA: <label>"``.
    """
    blocks = [block for block in text.strip("\n").split("\n\n") if block]
    if not blocks:
        return "", []
    instruction, demos = blocks[0], []
    for i, block in enumerate(blocks[1:]):
        question, sep, answer = block.partition("\nA:")
        if not (sep and question.startswith("Q: ")):
            raise ValueError(f"demonstration {i + 1} is not 'Q: ...\\nA: label': {block!r}")
        demos.append(Example(id=f"fixed-{i}", headline=question[3:], label=answer.strip()))
    return instruction, demos


def _same_text(a: str, b: str) -> bool:
    return " ".join(a.casefold().split()) == " ".join(b.casefold().split())


class PromptBuilder:
    """Builds a tier's prompts under a :class:`PromptStrategy`.

    Args:
        strategy: the tier's strategy.
        pool: labelled rows to draw demonstrations from (a training split); unused by ``fixed``.
        encoder: the sentence encoder; needed by ``retrieved`` only.
        pool_embeddings: the pool's embeddings if already computed (row ``i`` for ``pool[i]``);
            otherwise ``retrieved`` encodes the pool once here.
    """

    def __init__(
        self,
        strategy: PromptStrategy,
        pool: Sequence[Example] = (),
        *,
        encoder: Encoder | None = None,
        pool_embeddings: np.ndarray | None = None,
    ) -> None:
        self.strategy = strategy
        self.pool = list(pool)
        self._encoder = encoder
        self._fixed: list[Example] = []
        self._by_label: dict[str, list[tuple[int, Example]]] = {}  # label -> (permutation rank, row)
        self._pool_embeddings: np.ndarray | None = None
        if strategy.selection == "fixed":
            path = strategy.fixed_prompt or headlines_dir() / "prompt_8shot.txt"
            _, self._fixed = parse_prompt_file(path.read_text(encoding="utf-8"))
            if strategy.k > len(self._fixed):
                raise ValueError(f"k={strategy.k} but {path} holds only {len(self._fixed)} demonstrations")
        elif strategy.selection == "balanced":
            self._prepare_balanced()
        else:
            self._prepare_retrieval(pool_embeddings)

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

    def _prepare_retrieval(self, pool_embeddings: np.ndarray | None) -> None:
        if self.strategy.k > len(self.pool) - 1:
            raise ValueError(f"retrieved k={self.strategy.k} needs a pool of at least {self.strategy.k + 1} rows")
        if pool_embeddings is None:
            if self._encoder is None:
                raise ValueError("retrieved selection needs an encoder or the pool's embeddings")
            pool_embeddings = self._encoder.encode([example.headline for example in self.pool])
        if pool_embeddings.shape[0] != len(self.pool):
            raise ValueError(f"{pool_embeddings.shape[0]} pool embeddings for {len(self.pool)} pool rows")
        self._pool_embeddings = np.asarray(pool_embeddings, dtype=np.float32)

    def demonstrations(self, query: str, query_embedding: np.ndarray | None = None) -> list[Example]:
        """The demonstrations for ``query`` (headline text), in prompt order.

        Args:
            query_embedding: the query's embedding if the caller already has it (``retrieved``
                only); saves one encoder pass.
        """
        strategy = self.strategy
        if strategy.selection == "fixed":
            return self._fixed[: strategy.k]
        if strategy.selection == "balanced":
            chosen: list[tuple[int, Example]] = []
            for label, need in zip(strategy.labels, self._per_label_counts()):
                rows = (row for row in self._by_label[label] if not _same_text(row[1].headline, query))
                chosen += [next(rows) for _ in range(need)]
            return [example for _, example in sorted(chosen, key=lambda row: row[0])]
        return self._retrieve(query, query_embedding)

    def _retrieve(self, query: str, query_embedding: np.ndarray | None) -> list[Example]:
        assert self._pool_embeddings is not None
        if query_embedding is None:
            if self._encoder is None:
                raise ValueError("retrieved selection needs an encoder or the query's embedding")
            query_embedding = self._encoder.encode([query])[0]
        similarity = self._pool_embeddings @ np.asarray(query_embedding, dtype=np.float32)
        nearest: list[Example] = []
        # A stable sort breaks similarity ties by pool order, so retrieval is deterministic.
        for i in np.argsort(-similarity, kind="stable"):
            if len(nearest) == self.strategy.k:
                break
            if not _same_text(self.pool[i].headline, query):
                nearest.append(self.pool[i])
        return nearest[::-1]  # most similar last, right before the query

    def build_prompt(self, query: str, query_embedding: np.ndarray | None = None) -> str:
        """The full prompt for ``query`` (headline text)."""
        return render_prompt(self.strategy.instruction, self.demonstrations(query, query_embedding), query)

    def content_free_prompts(self, query: str, query_embedding: np.ndarray | None = None) -> list[str]:
        """The calibration prompts for ``query``: its own demonstrations, content-free query text.

        Raises:
            ValueError: if the strategy has no calibration.
        """
        if self.strategy.calibration is None:
            raise ValueError("this strategy has no calibration")
        demos = self.demonstrations(query, query_embedding)
        return [
            render_prompt(self.strategy.instruction, demos, text) for text in self.strategy.calibration.content_free
        ]


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
