"""``choice``: label-choice answers; the chosen label (whitespace and case aside) is a reference.

For classification and multiple-choice rows, whose tiers score each of the row's ``choices``
(or the policy's labels) and answer with the most likely one.
"""

from __future__ import annotations

from tierlm.router.judges.base import Judge


class ChoiceJudge(Judge):
    name = "choice"

    def score_one(self, answer: str, reference: str) -> float:
        return float(answer.strip().casefold() == reference.strip().casefold())
