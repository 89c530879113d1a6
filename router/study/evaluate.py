"""The routing table of one workload: cascades fitted on one split, measured on another, beside
every single tier, the oracle and the no-LLM references (knn-vote, and the probe where the
rows are labels), with the cost-accuracy plot. `tierlm eval cascade` prints and writes it."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tierlm.config import Policy
from tierlm.router.embeddings import TextEncoder
from tierlm.router.learn.cascade_eval import CascadePolicy
from tierlm.router.learn.offline import cascade_data, common_queries, fit_scores, prerouter_fail_probs
from tierlm.router.learn.optimizer import fit_frontier
from tierlm.router.learn.quality import tier_score_metrics
from tierlm.router.learn.scorer import Scorer
from tierlm.router.nollm.base import pool_labels
from tierlm.router.nollm.knn import KnnVote
from tierlm.router.nollm.models import NO_LLM_MODELS
from tierlm.router.nollm.probe import LinearProbe
from tierlm.router.study.cascade_report import frontier_on, policy_row, routing_rows
from tierlm.router.study.collect import AnswerStore
from tierlm.router.study.frontier_plot import plot_cost_accuracy
from tierlm.router.workload import Workload, WorkloadRow


@dataclass
class RoutingStudy:
    """What :func:`evaluate_cascades` measured: the rows (bench result shape) and their context."""

    rows: list[dict[str, Any]]
    context: dict[str, Any]
    plot: Path | None = None


def evaluate_cascades(
    store: AnswerStore,
    scorer_dir: Path,
    workload: Workload,
    encoder: TextEncoder,
    *,
    split: str,
    fit_split: str,
    pool: Workload | None = None,
    policy: Policy | None = None,
    budgets: Sequence[float] = (),
    tiers: Sequence[str] = (),
    plot_to: Path | None = None,
    title: str | None = None,
) -> RoutingStudy:
    """Fit cascades (and pre-routed ones) on ``fit_split``'s answers, evaluate on ``split``'s.

    ``workload`` holds ``split`` (its rows are judged and give the no-LLM references their
    queries); ``pool`` holds ``fit_split`` (the references learn from it), when it is another
    file. Thresholds are fitted on held-out scores: the scorer's out-of-fold ones when it
    trained on ``fit_split``. ``budgets`` (per query) default to a grid between the cheapest
    cascade and the dearest tier. With ``policy`` (a fitted policy file), its own cascade is a
    row too (``policy``), and gains are measured against the best *language-model* tier alone.
    """
    if split == fit_split:
        raise ValueError("fitting and evaluating on one split reports in-sample numbers")
    fit_records, test_records = store.records(fit_split, tiers or None), store.records(split, tiers or None)
    if not fit_records or not test_records:
        raise ValueError(f"{store.path} needs answers on both {fit_split!r} and {split!r}")
    scorer = Scorer.load(scorer_dir, encoder)
    queries = sorted({r.query for r in (*fit_records, *test_records)})
    embed = dict(zip(queries, encoder.encode(queries)))
    fit_fail, test_fail = prerouter_fail_probs(fit_records, test_records, embed)
    held_out_scores = fit_scores(scorer, fit_split)
    fit_data = cascade_data(fit_records, scorer, fit_fail, scores=held_out_scores)
    test_data = cascade_data(test_records, scorer, test_fail)
    frontiers = {"cascade": fit_frontier(fit_data), "cascade-preroute": fit_frontier(fit_data, prerouting=True)}
    tier_costs = [float(t.cost.mean()) for t in test_data.tiers.values()]
    cheapest = min(p.cost_per_query for p in frontiers["cascade"].points)
    grid = budgets or sorted({float(b) for b in np.geomspace(max(cheapest, 1e-12), max(tier_costs) * 1.05, 6)})
    # Gains against the best language-model tier alone; a policy with none (no-LLM tiers only)
    # is compared with the best single tier instead.
    llm_tiers = None if policy is None else [t.name for t in policy.tiers if t.model not in NO_LLM_MODELS and t.name in test_data.tiers] or None
    rows = routing_rows(test_data, [b for b in grid if b >= cheapest], frontiers, compare_to=llm_tiers)
    if policy is not None:
        fitted = CascadePolicy(tuple(policy.cascade.order), dict(policy.cascade.thresholds))
        rows.append(policy_row("policy", fitted, fit_data, test_data, compare_to=llm_tiers))

    ids = common_queries(test_records)
    by_id = {r.query_id: r for r in test_records}
    test_rows = {row.id: row for row in workload.split(split)}
    evaluated = [test_rows[i] for i in ids]
    baselines = no_llm_references((pool or workload).split(fit_split), evaluated, [embed[by_id[i].query] for i in ids], encoder, workload)
    rows += [{"name": name, "accuracy": accuracy, "cost_per_query": 0.0} for name, accuracy in baselines.items()]

    scorer_metrics = {tier: dataclasses.asdict(m) for tier, m in tier_score_metrics(test_data).items()}
    context = {
        "workload": str(workload.source), "split": split, "fit_split": fit_split, "queries": test_data.n,
        "fit_queries": fit_data.n, "tiers": list(test_data.tiers), "scorer": str(scorer_dir),
        "scorer_metrics": scorer_metrics, "fit_scores": "out-of-fold" if held_out_scores is not None else "held-out",
        "gains_against": "best language-model tier" if llm_tiers is not None else "best single tier",
    }
    study = RoutingStudy(rows, context)
    if plot_to is not None:
        singles = {r["name"]: (r["cost_per_query"], r["accuracy"]) for r in rows if r["name"].endswith("-only")}
        oracle = next((r["cost_per_query"], r["accuracy"]) for r in rows if r["name"] == "oracle")
        study.plot = plot_cost_accuracy(
            plot_to, frontier=frontier_on(frontiers["cascade"], test_data),
            frontier_label=f"cascade (fitted on {fit_split})", single_tiers=singles, oracle=oracle,
            baselines={name: (0.0, accuracy) for name, accuracy in baselines.items()}, log_x=True,
            title=title or f"{workload.source.parent.name} {split}: accuracy vs cost per query",
        )
    return study


def no_llm_references(
    pool: Sequence[WorkloadRow],
    rows: Sequence[WorkloadRow],
    row_embeddings: Sequence[np.ndarray],
    encoder: TextEncoder,
    workload: Workload,
) -> dict[str, float]:
    """Accuracy of the answerers that need no language model, trained on ``pool``: the majority
    vote of the 8 nearest pool rows (``knn-vote``) and a logistic probe (``minilm-probe``), each
    judged like the tiers. Empty for free-form rows, where a label vote means nothing."""
    if not rows or not all(row.choices for row in (*pool, *rows)):
        return {}
    pool_embeddings = encoder.encode([row.query for row in pool])
    labels, label_set = [row.label for row in pool], pool_labels(pool)  # the served tiers' label order
    queries = np.stack(row_embeddings)
    knn = [vote.label for vote in KnnVote(pool_embeddings, labels, labels=label_set).predict(queries)]
    probe = LinearProbe(pool_embeddings, labels, labels=label_set)
    probe_labels = [probe.labels[i] for i in np.argmax(probe.probabilities(queries), axis=1)]
    return {
        name: float(np.mean([workload.judge_for(row).correct(answer, row.reference) for answer, row in zip(answers, rows)]))
        for name, answers in (("knn-vote", knn), ("minilm-probe", probe_labels))
    }
