"""``exact`` and ``normalized``: the answer equals a reference, as it is or after normalisation.

``normalized`` is FrugalGPT's exact-match metric and SQuAD's EM: the first line of the answer,
lower-cased, without punctuation and articles, whitespace collapsed, on both sides.
"""

from __future__ import annotations

from tierlm.router.judges.base import Judge
from tierlm.router.judges.text import first_line, normalize


class ExactJudge(Judge):
    name = "exact"

    def score_one(self, answer: str, reference: str) -> float:
        return float(answer.strip() == reference.strip())


class NormalizedJudge(Judge):
    name = "normalized"

    def score_one(self, answer: str, reference: str) -> float:
        return float(normalize(first_line(answer)) == normalize(reference))
