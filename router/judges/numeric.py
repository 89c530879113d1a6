"""``numeric``: the first number in the answer equals a numeric reference within a tolerance.

``tolerance`` is relative to the reference (``|a - r| <= tolerance * max(|r|, 1)``), so 0
asks for the exact value; thousands separators are ignored.
"""

from __future__ import annotations

import math
import re

from tierlm.router.judges.base import Judge

_NUMBER = re.compile(r"[-+]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?")


def first_number(text: str) -> float | None:
    match = _NUMBER.search(text.replace(",", ""))
    return float(match.group()) if match else None


class NumericJudge(Judge):
    name = "numeric"

    def __init__(self, tolerance: float = 0.0) -> None:
        if not tolerance >= 0:
            raise ValueError(f"tolerance must be >= 0, got {tolerance}")
        self.tolerance = tolerance

    def score_one(self, answer: str, reference: str) -> float:
        want, got = first_number(reference), first_number(answer)
        if want is None or got is None or not math.isfinite(got):
            return 0.0
        return float(abs(got - want) <= self.tolerance * max(abs(want), 1.0))
