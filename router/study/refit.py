"""Refitting a policy from its own live traffic, testing it in the shadows, promoting or rolling back.

The data is what the router recorded (``details`` on its ledger rows) and what callers said of
it (feedback): :mod:`tierlm.router.learn.traffic` turns them into labelled answers. A refit
trains a new scorer on every labelled answer of the fit window, fits order and thresholds for
the live policy's budget on *explored* requests (the only ones where every tier answered, so a
cascade's choices can be replayed) using the new scorer's out-of-fold scores, and writes a
candidate policy. The shadow test replays the candidate and the live policy on explored
requests it never saw (the held-back, later part of the window) with each policy's own scorer:
the candidate is promoted only when its estimated accuracy is at least the live policy's, at no
higher cost or, where ``learning.refit_budget_per_query`` is set, within that budget (so a refit
can spend what the policy allows to win accuracy back after a shift); the paired 95% interval of
the accuracy gain is reported either way.
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from tierlm.config import Policy, load_policy
from tierlm.router.embeddings import TextEncoder
from tierlm.router.judges import JUDGES
from tierlm.router.learn.cascade_eval import CascadeData, CascadePolicy, TierOutcomes, evaluate_cascade
from tierlm.router.learn.features import own_confidence
from tierlm.router.learn.optimizer import InfeasibleBudgetError, fit_frontier
from tierlm.router.learn.records import AnswerRecord
from tierlm.router.learn.scorer import Scorer, train
from tierlm.router.learn.traffic import LabelledRequest, answer_records, label, policy_version
from tierlm.router.store import Labelled
from tierlm.router.study.cascade_report import bootstrap_interval
from tierlm.router.study.fit import FittedPolicy, write_policy

#: Share of the window's explored requests held back for the shadow test (the latest ones).
SHADOW_SHARE = 0.3


@dataclass(frozen=True)
class ShadowResult:
    """The candidate against the live policy on held-back explored requests."""

    requests: int
    live_accuracy: float
    live_cost: float
    candidate_accuracy: float
    candidate_cost: float
    gain: float  # candidate - live accuracy, paired on the same requests
    gain_ci95: tuple[float, float]
    promote: bool


@dataclass(frozen=True)
class Refit:
    candidate: Path
    labels: int  # labelled requests the refit learned from
    fit_requests: int  # explored requests the thresholds were fitted on
    shadow: ShadowResult


def labelled_requests(labelled: list[Labelled], policy: Policy) -> list[LabelledRequest]:
    judge = JUDGES.build(policy.learning.feedback_judge)
    return [label(item, judge) for item in labelled]


def refit(
    policy_path: Path, labelled: list[Labelled], encoder: TextEncoder, out: Path, *, min_explored: int = 40
) -> Refit:
    """Fit a candidate policy on the earlier part of ``labelled`` and shadow-test it on the rest.

    The candidate (and its scorer, in a folder beside it) is written to ``out``; nothing is
    promoted here (see :func:`promote`)."""
    policy = load_policy(policy_path)
    requests = sorted(labelled_requests(labelled, policy), key=lambda r: r.ts)
    tiers = [t.name for t in policy.tiers]
    explored = [r for r in requests if set(tiers) <= set(r.answers) and all(r.correct[t] is not None for t in tiers)]
    if len(explored) < min_explored:
        raise ValueError(f"{len(explored)} explored, fully labelled requests; a refit needs at least {min_explored} "
                         "(raise learning.explore.share, or wait for more feedback)")
    cut = explored[int(len(explored) * (1 - SHADOW_SHARE))].ts
    fit_part = [r for r in requests if r.ts < cut]
    shadow_part = [r for r in explored if r.ts >= cut]
    scorer_dir = out.parent / f"{out.stem}-scorer"
    scorer = train(answer_records(fit_part), encoder, split="live")
    scorer.save(scorer_dir)
    fit_explored = [r for r in explored if r.ts < cut]
    live_scorer = Scorer.load(policy.scorer.path, encoder) if policy.scorer is not None else None
    budget = policy.learning.refit_budget_per_query
    if budget is None:  # spend no more than the live policy does on the same requests
        budget = evaluate_cascade(_cascade_data(fit_explored, tiers, live_scorer), _cascade_of(policy)).cost_per_query
    try:
        point = fit_frontier(_cascade_data(fit_explored, tiers, scorer, out_of_fold=True)).best_within(budget)
    except InfeasibleBudgetError as exc:
        raise ValueError(f"no cascade fits the refit budget {budget:.3g} per query: {exc}") from None
    write_policy(policy_path, out, scorer_dir.resolve(), FittedPolicy(point, budget, "explored live", len(fit_explored), "out-of-fold"),
                 answers=f"the router's store ({len(fit_part)} labelled requests before {time.strftime('%Y-%m-%d %H:%M:%S', time.gmtime(cut))} UTC)")
    shadow = shadow_test(policy, point.policy, live_scorer, scorer, shadow_part, tiers, policy.learning.refit_budget_per_query)
    return Refit(out, len(fit_part), len(fit_explored), shadow)


def shadow_test(
    live: Policy, candidate: CascadePolicy, live_scorer: Scorer | None, candidate_scorer: Scorer,
    requests: list[LabelledRequest], tiers: list[str], budget: float | None = None,
) -> ShadowResult:
    """Replay both policies on explored requests neither was fitted on, each with its own scorer;
    the candidate may cost up to ``budget`` per query (None: what the live policy costs)."""
    live_result = evaluate_cascade(_cascade_data(requests, tiers, live_scorer), _cascade_of(live))
    candidate_result = evaluate_cascade(_cascade_data(requests, tiers, candidate_scorer), candidate)
    diff = candidate_result.correct.astype(float) - live_result.correct.astype(float)
    low, high = bootstrap_interval(diff)
    ceiling = max(live_result.cost_per_query, budget or 0.0)
    promote = (candidate_result.accuracy >= live_result.accuracy
               and candidate_result.cost_per_query <= ceiling * (1 + 1e-9))
    return ShadowResult(len(requests), live_result.accuracy, live_result.cost_per_query, candidate_result.accuracy,
                        candidate_result.cost_per_query, float(diff.mean()), (low, high), promote)


def _cascade_of(policy: Policy) -> CascadePolicy:
    return CascadePolicy(tuple(policy.cascade.order), dict(policy.cascade.thresholds))


def _cascade_data(requests: list[LabelledRequest], tiers: list[str], scorer: Scorer | None, out_of_fold: bool = False) -> CascadeData:
    """Per tier: correctness, score and cost of its answer to each request (every tier answered).

    Scores come from ``scorer`` (its out-of-fold scores on its own training requests when
    ``out_of_fold``), or the answers' own confidence when the policy has no learned scorer."""
    outcomes = {}
    for tier in tiers:
        answers = [r.answers[tier] for r in requests]
        if scorer is None:
            scores = np.array([own_confidence(a.token_logprobs, a.label_logprobs) for a in answers])
        elif out_of_fold:
            table = scorer.out_of_fold.get(tier, {})
            scores = np.array([table[r.request_id] for r in requests])
        else:
            records = [AnswerRecord(r.query, a.text.strip(), tier, a.token_logprobs,
                                    dict(a.label_logprobs) if a.label_logprobs else None) for r, a in zip(requests, answers)]
            scores = scorer.score_records(records)
        outcomes[tier] = TierOutcomes(
            correct=np.array([bool(r.correct[tier]) for r in requests]), score=scores,
            cost=np.array([a.cost for a in answers]),
        )
    return CascadeData(outcomes)


def history_folder(policy_path: Path) -> Path:
    return policy_path.parent / f"{policy_path.name}.history"


def promote(policy_path: Path, candidate: Path) -> Path:
    """Make ``candidate`` the live policy: the current file is kept in its history folder, then
    replaced in one rename (running routers reload it). Returns where the old one went."""
    history = history_folder(policy_path)
    history.mkdir(exist_ok=True)
    kept = history / f"{time.strftime('%Y%m%dT%H%M%S', time.gmtime())}-{policy_version(policy_path)}.yaml"
    shutil.copy2(policy_path, kept)
    staged = policy_path.with_name(policy_path.name + ".promoting")
    shutil.copy2(candidate, staged)
    staged.replace(policy_path)
    return kept


def rollback(policy_path: Path) -> Path:
    """Return to the policy the last promotion replaced; that history entry is consumed."""
    history = sorted(history_folder(policy_path).glob("*.yaml")) if history_folder(policy_path).is_dir() else []
    if not history:
        raise ValueError(f"no earlier policy in {history_folder(policy_path)}: nothing to roll back to")
    previous = history[-1]
    load_policy(previous)  # must still load (its scorer folder may have been deleted)
    staged = policy_path.with_name(policy_path.name + ".rollback")
    shutil.copy2(previous, staged)
    staged.replace(policy_path)
    previous.unlink()
    return previous


def decision_numbers(result: Refit) -> str:
    return json.dumps({"labels": result.labels, "fit_requests": result.fit_requests, **asdict(result.shadow)})
