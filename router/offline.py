"""From collected answers to the optimizer's arrays: align tiers on queries, score every answer."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from tierlm.router.cascade_eval import CascadeData, TierOutcomes
from tierlm.router.records import AnswerRecord
from tierlm.router.scorer import Scorer


def cascade_data(records: Sequence[AnswerRecord], scorer: Scorer, tiers: Sequence[str] | None = None) -> tuple[CascadeData, list[str]]:
    """Per tier, correctness, the scorer's P(correct) and cost, on the queries every tier answered.

    Returns the data and the query ids in its row order."""
    by_tier: dict[str, dict[str, AnswerRecord]] = {}
    for record in records:
        if tiers is None or record.tier in tiers:
            by_tier.setdefault(record.tier, {})[record.query_id] = record
    if not by_tier:
        raise ValueError("no answers for the requested tiers")
    common = sorted(set.intersection(*(set(answers) for answers in by_tier.values())))
    outcomes = {}
    for tier, answers in by_tier.items():
        aligned = [answers[qid] for qid in common]
        outcomes[tier] = TierOutcomes(
            correct=np.array([bool(r.correct) for r in aligned]),
            score=scorer.score_records(aligned),
            cost=np.array([r.cost for r in aligned]),
        )
    return CascadeData(outcomes), common
