"""``token_f1``: SQuAD's token-overlap F1 between the answer and the best reference.

Both sides are normalised as SQuAD's evaluation script does (lower case, no punctuation or
articles); the answer's first line counts. Correct when F1 reaches ``threshold`` (default 0.5:
at least half the tokens agree in both directions); reports may average the F1 itself.
"""

from __future__ import annotations

from collections import Counter

from tierlm.router.judges.base import Judge
from tierlm.router.judges.text import first_line, normalize


def token_f1(answer: str, reference: str) -> float:
    got, want = normalize(answer).split(), normalize(reference).split()
    if not got or not want:
        return float(got == want)
    overlap = sum((Counter(got) & Counter(want)).values())
    if overlap == 0:
        return 0.0
    precision, recall = overlap / len(got), overlap / len(want)
    return 2 * precision * recall / (precision + recall)


class TokenF1Judge(Judge):
    name = "token_f1"

    def __init__(self, threshold: float = 0.5) -> None:
        if not 0.0 < threshold <= 1.0:
            raise ValueError(f"threshold must be in (0, 1], got {threshold}")
        self.threshold = threshold

    def score_one(self, answer: str, reference: str) -> float:
        return token_f1(first_line(answer), reference)
