"""A drafter's frequent vocabulary: the tokens drafts are drawn from.

The output layer is most of a small model's decode step (Gemma 3 270M: 262,144 rows of 640, 62%
of its weights), and drafts are mostly common tokens. FR-Spec (Zhao et al. 2025, "FR-Spec:
Accelerating Large-Vocabulary Language Models via Frequency-Ranked Speculative Sampling")
drafts from the most frequent tokens of a corpus only; the verifier still scores the full
vocabulary, so the output stays exact and only drafts outside the subset are lost.

Frequencies come from text like the node's traffic. A modest text holds a few thousand distinct
tokens (the python-docs calibration text: 4,191 of Gemma's, covering 88% of the eval text's
tokens), so the rest of the budget goes to the tokenizer's own order: BPE and SentencePiece
vocabularies are built most-common-first, so low ids stand in for the frequencies of the
tokenizer's training corpus (with them, 32,768 tokens cover 97% of that eval text).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from itertools import islice
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

    from tierlm.edge.config import ModelConfig

#: Tokens kept when a size is not given: a quarter of a 131k-262k vocabulary's product or less.
DEFAULT_SIZE = 32768


def frequent_tokens(
    tokenizer: Any, texts: Iterable[str], size: int = DEFAULT_SIZE, vocab_size: int | None = None, always: Sequence[int] = (),
) -> torch.Tensor:
    """``size`` token ids, ascending: those of ``texts`` by count (ties by lower id), then the
    lowest other ids below ``vocab_size`` (the tokenizer's own order) while room is left, plus
    ``always`` (end-of-sequence ids: a draft must be able to stop)."""
    import torch  # here: the CLI reads DEFAULT_SIZE without loading torch

    if size < 1:
        raise ValueError(f"a draft vocabulary needs at least one token, got size {size}")
    counts: Counter[int] = Counter()
    for text in texts:
        counts.update(tokenizer(text, add_special_tokens=False)["input_ids"])
    if not counts:
        raise ValueError("no tokens to rank: the draft vocabulary's texts are empty")
    chosen = set(sorted(counts, key=lambda token: (-counts[token], token))[:size])
    unseen = (token for token in range(vocab_size or 0) if token not in chosen)
    chosen.update(islice(unseen, size - len(chosen)))
    return torch.tensor(sorted(chosen | set(always)), dtype=torch.int64)


def vocabulary_from_text(path: str | Path, tokenizer: Any, config: ModelConfig, size: int = DEFAULT_SIZE) -> torch.Tensor:
    """:func:`frequent_tokens` of a text file (or a folder's ``.txt`` files), paragraph by
    paragraph, within ``config``'s vocabulary and with its end-of-sequence ids."""
    from tierlm.edge.perplexity import read_text

    return frequent_tokens(tokenizer, read_text(path).split("\n\n"), size, config.vocab_size, config.eos_token_ids)
