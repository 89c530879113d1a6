"""A drafter's frequent vocabulary: the tokens drafts are drawn from.

The output layer is most of a small model's decode step (Gemma 3 270M: 262,144 rows of 640, 62%
of its weights), and drafts are mostly common tokens. FR-Spec (Zhao et al. 2025, "FR-Spec:
Accelerating Large-Vocabulary Language Models via Frequency-Ranked Speculative Sampling")
drafts from the most frequent tokens of a corpus only; the verifier still scores the full
vocabulary, so the output stays exact and only drafts outside the subset are lost.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

#: Tokens kept when a size is not given: a quarter of a 131k-262k vocabulary's product or less.
DEFAULT_SIZE = 32768


def frequent_tokens(tokenizer: Any, texts: Iterable[str], size: int = DEFAULT_SIZE, always: Sequence[int] = ()) -> torch.Tensor:
    """The ``size`` most frequent token ids of ``texts`` (ties by lower id) plus ``always``
    (end-of-sequence ids: a draft must be able to stop), ascending.

    Fewer come back when the texts hold fewer distinct tokens: a token never seen there is
    not worth a row of every draft step.
    """
    import torch  # here: the CLI reads DEFAULT_SIZE without loading torch

    if size < 1:
        raise ValueError(f"a draft vocabulary needs at least one token, got size {size}")
    counts: Counter[int] = Counter()
    for text in texts:
        counts.update(tokenizer(text, add_special_tokens=False)["input_ids"])
    if not counts:
        raise ValueError("no tokens to rank: the draft vocabulary's texts are empty")
    ranked = sorted(counts, key=lambda token: (-counts[token], token))[:size]
    return torch.tensor(sorted(set(ranked) | set(always)), dtype=torch.int64)
