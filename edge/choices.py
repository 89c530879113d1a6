"""Label choices as a tree of tokens: which tokens may follow each prefix of a choice.

Constrained scoring (``GenerationRequest.constrained_choices``) scores a choice as constrained
decoding would generate it: at each position, the model's distribution renormalised over the
tokens that continue some choice sharing the prefix so far. So only those rows of the output
layer matter, and an engine computes just them.
"""

from __future__ import annotations

from collections.abc import Sequence


class ChoiceTree:
    """The choices' token ids merged by common prefixes."""

    def __init__(self, choice_ids: Sequence[Sequence[int]]) -> None:
        children: dict[tuple[int, ...], set[int]] = {}
        for ids in choice_ids:
            for depth, token in enumerate(ids):
                children.setdefault(tuple(ids[:depth]), set()).add(token)
        self._children = {prefix: tuple(sorted(tokens)) for prefix, tokens in children.items()}

    def allowed(self, prefix: Sequence[int]) -> tuple[int, ...]:
        """The tokens (ascending) that continue some choice after ``prefix``, a prefix of one."""
        return self._children[tuple(prefix)]

    def branches(self) -> dict[tuple[int, ...], tuple[int, ...]]:
        """Every prefix that some choice continues, with its allowed next tokens."""
        return dict(self._children)
