"""Fitting a policy: the cascade order and thresholds with the most accuracy within a budget,
written into a policy file beside the scorer that judges the answers.

Thresholds are fitted on the scorer's *out-of-fold* scores of the split it was trained on (each
answer scored by a model that never saw its query), so the accuracy the fit reports is what
the policy should reach on new queries, not an in-sample figure.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import yaml

from tierlm.config import load_policy
from tierlm.router.embeddings import TextEncoder
from tierlm.router.learn.offline import cascade_data, fit_scores
from tierlm.router.learn.optimizer import FrontierPoint, fit_frontier
from tierlm.router.learn.scorer import Scorer
from tierlm.router.study.collect import AnswerStore

#: Top-level policy sections a fit rewrites (with the comment lines a fit wrote above them).
_FITTED_SECTIONS = ("scorer", "cascade")


@dataclass(frozen=True)
class FittedPolicy:
    point: FrontierPoint
    budget: float
    split: str
    queries: int
    scores: str  # "out-of-fold" or "held-out"


def fit_cascade(
    store: AnswerStore,
    scorer_dir: Path,
    encoder: TextEncoder,
    *,
    split: str = "train",
    budget: float | None = None,
    budget_share: float | None = None,
    tiers: list[str] | None = None,
) -> FittedPolicy:
    """The most accurate cascade on ``split``'s answers whose mean cost per query is at most
    ``budget`` (or ``budget_share`` x the dearest tier's mean cost)."""
    if (budget is None) == (budget_share is None):
        raise ValueError("give exactly one of budget and budget_share")
    records = store.records(split, tiers)
    if not records:
        raise ValueError(f"no answers on split {split!r} in {store.path}")
    scorer = Scorer.load(scorer_dir, encoder)
    held_out = fit_scores(scorer, split)
    data = cascade_data(records, scorer, scores=held_out)
    if budget is None:
        budget = float(budget_share) * max(float(t.cost.mean()) for t in data.tiers.values())
    point = fit_frontier(data).best_within(budget)
    return FittedPolicy(point, budget, split, data.n, "out-of-fold" if held_out is not None else "held-out")


def write_policy(source: Path, out: Path, scorer_dir: Path, fitted: FittedPolicy, answers: str) -> None:
    """``source`` with its scorer and cascade sections replaced by the fit, written to ``out``
    (may be ``source``); the rest of the file, comments included, is kept. The result must load."""
    point = fitted.point
    cascade = {"order": list(point.policy.order), "thresholds": {k: round(v, 6) for k, v in point.policy.thresholds.items()}}
    text = _without_sections(source.read_text(encoding="utf-8"), _FITTED_SECTIONS).rstrip() + "\n"
    text += yaml.safe_dump({"scorer": {"path": str(scorer_dir)}}, sort_keys=False)
    text += (
        f"# fitted on the answers to {fitted.queries} {fitted.split} rows in {answers}"
        f" ({fitted.scores} scores)\n"
        f"# for a mean cost <= {fitted.budget:.3g} per query: accuracy {point.accuracy:.3f} at {point.cost_per_query:.3g}\n"
    )
    text += yaml.safe_dump({"cascade": cascade}, sort_keys=False, default_flow_style=None)
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_name(out.name + ".partial")
    partial.write_text(text, encoding="utf-8")
    load_policy(partial)  # what is written must be a valid policy before it replaces anything
    partial.replace(out)


def _without_sections(text: str, keys: tuple[str, ...]) -> str:
    """``text`` without the top-level YAML blocks ``keys`` and the comment lines just above them."""
    out: list[str] = []
    skipping = False
    for line in text.splitlines():
        if re.match(rf"^({'|'.join(keys)}):", line):
            while out and out[-1].startswith("# fitted"):
                out.pop()
            skipping = True
            continue
        if skipping and (line.startswith((" ", "\t")) or not line.strip()):
            continue
        skipping = False
        out.append(line)
    return "\n".join(out)
