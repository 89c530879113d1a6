"""``regex``: a reference is a regular expression the answer's first line must match in full."""

from __future__ import annotations

import re

from tierlm.router.judges.base import Judge
from tierlm.router.judges.text import first_line


class RegexJudge(Judge):
    name = "regex"

    def __init__(self, ignore_case: bool = False) -> None:
        self.flags = re.IGNORECASE if ignore_case else 0

    def score_one(self, answer: str, reference: str) -> float:
        return float(re.fullmatch(reference, first_line(answer), self.flags) is not None)
