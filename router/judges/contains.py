"""``contains``: a reference appears in the answer (after normalisation of both)."""

from __future__ import annotations

from tierlm.router.judges.base import Judge
from tierlm.router.judges.text import normalize


class ContainsJudge(Judge):
    name = "contains"

    def score_one(self, answer: str, reference: str) -> float:
        needle = normalize(reference)
        return float(bool(needle) and f" {needle} " in f" {normalize(answer)} ")
