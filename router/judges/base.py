"""The judge interface: does an answer count as correct for a row's references?

A judge scores an answer in [0, 1] against the row's acceptable answers (the best over them)
and calls it correct when the score reaches its ``threshold`` (1.0 for yes/no judges). The
cascade learns P(correct), so collection stores the verdict; reports may also average the score
(token F1, say). One judge per file, named in :data:`tierlm.router.judges.JUDGES`; a workload row
names its judge and options (``{"judge": {"name": "numeric", "tolerance": 0.01}}``).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import ClassVar


class Judge(ABC):
    name: ClassVar[str]
    #: The score at or above which an answer is correct.
    threshold: float = 1.0

    def score(self, answer: str, references: Sequence[str]) -> float:
        """The best score of ``answer`` over ``references``, in [0, 1]."""
        return max((self.score_one(answer, reference) for reference in references), default=0.0)

    @abstractmethod
    def score_one(self, answer: str, reference: str) -> float:
        """``answer`` against one reference, in [0, 1]."""

    def correct(self, answer: str, references: Sequence[str]) -> bool:
        return self.score(answer, references) >= self.threshold
