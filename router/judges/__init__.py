"""Judges: whether a tier's answer is correct for a workload row, one file per judge.

``JUDGES.build(name, **options)`` builds one; :class:`~tierlm.router.judges.base.Judge` is the
interface. See each module for what its name means.
"""

from tierlm.registry import Registry
from tierlm.router.judges.base import Judge
from tierlm.router.judges.choice import ChoiceJudge
from tierlm.router.judges.contains import ContainsJudge
from tierlm.router.judges.exact import ExactJudge, NormalizedJudge
from tierlm.router.judges.numeric import NumericJudge
from tierlm.router.judges.regex import RegexJudge
from tierlm.router.judges.token_f1 import TokenF1Judge

JUDGES: Registry[Judge] = Registry(
    "judge",
    {
        cls.name: cls
        for cls in (ChoiceJudge, ExactJudge, NormalizedJudge, ContainsJudge, NumericJudge, RegexJudge, TokenF1Judge)
    },
)

__all__ = ["JUDGES", "Judge"]
