"""The scorer's inputs: text features from the sentence encoder, confidence signals from the tier.

Two ways to turn (query, answer) into a vector, chosen per scorer by measurement:

* ``joint``: one embedding of ``"query [SEP] answer"`` (FrugalGPT's scorer reads the same
  concatenation). One encoder pass per answer, nothing reusable.
* ``separate``: the query's embedding ``q``, the answer's embedding ``a`` and their
  element-wise product ``q * a``, which lets a linear model weigh query directions per answer.
  ``q`` is the embedding a retrieved prompt or the knn-vote tier already computed for the
  request, and answers repeat (a label set has a handful of strings), so scoring an answer
  costs no encoder pass at all once the request's query is embedded.

bench/scorer_headlines.py compares the two on HEADLINES dev with two real no-LLM tiers
(bench/results/scorer_headlines.json): ``separate`` ranks answers as well or better, and it is
free at serving time, so it is the default.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Literal

import numpy as np

TextFeatures = Literal["joint", "separate"]

CONFIDENCE_FEATURES: tuple[str, ...] = (
    "has_token_logprobs",
    "mean_token_logprob",
    "min_token_logprob",
    "log1p_answer_tokens",
    "log1p_answer_chars",
    "has_label_logprobs",
    "label_top_prob",
    "label_margin",
    "label_entropy",
)
"""Names of :func:`confidence_features`' columns, in order. Absent signals read 0 with their flag at 0."""


def joint_text(query: str, answer: str) -> str:
    """The text the ``joint`` features embed. MiniLM's tokenizer reads ``[SEP]`` as its separator token."""
    return f"{query} [SEP] {answer}"


def text_width(kind: TextFeatures, dim: int) -> int:
    """Columns the text features take for an encoder of width ``dim``."""
    return dim if kind == "joint" else 3 * dim


def separate_features(query_embeddings: np.ndarray, answer_embeddings: np.ndarray) -> np.ndarray:
    """``[q, a, q * a]`` row by row."""
    return np.hstack([query_embeddings, answer_embeddings, query_embeddings * answer_embeddings])


def own_confidence(token_logprobs: Sequence[float], label_logprobs: Mapping[str, float] | None) -> float:
    """A tier's confidence in its answer, the score used when a policy has no learned scorer:
    the renormalised probability of the chosen label for label-choice answers, otherwise the
    geometric mean of the generated tokens' probabilities (0 without either)."""
    if label_logprobs:
        values = np.array(list(label_logprobs.values()), dtype=np.float64)
        return float(1.0 / np.exp(values - values.max()).sum())
    return float(np.exp(np.mean(token_logprobs))) if len(token_logprobs) else 0.0


def confidence_features(
    answer: str, token_logprobs: Sequence[float], label_logprobs: Mapping[str, float] | None
) -> np.ndarray:
    """The tier's own confidence signals for one answer, as :data:`CONFIDENCE_FEATURES`.

    Label log-probs are renormalised over the label set before the top probability, the top-two
    margin and the entropy (divided by log of the number of labels, so it lies in [0, 1]).
    """
    out = np.zeros(len(CONFIDENCE_FEATURES), dtype=np.float64)
    if token_logprobs:
        out[0] = 1.0
        out[1] = float(np.mean(token_logprobs))
        out[2] = float(np.min(token_logprobs))
    out[3] = math.log1p(len(token_logprobs))
    out[4] = math.log1p(len(answer))
    if label_logprobs:
        values = np.array(list(label_logprobs.values()), dtype=np.float64)
        probs = np.exp(values - values.max())
        probs /= probs.sum()
        ordered = np.sort(probs)[::-1]
        out[5] = 1.0
        out[6] = ordered[0]
        out[7] = ordered[0] - (ordered[1] if len(ordered) > 1 else 0.0)
        if len(probs) > 1:
            nonzero = probs[probs > 0]
            out[8] = float(-(nonzero * np.log(nonzero)).sum() / math.log(len(probs)))
    return out
