"""`tierlm router train` and `tierlm eval cascade` on a small answer store with real HEADLINES rows."""

from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from tierlm.app.cli import app
from tierlm.router.study.collect import AnswerStore
from tierlm.router.learn.records import AnswerRecord

from tests.support.workloads import HEADLINES, LABELS, headlines

COSTS = {"small": 1e-7, "large": 1e-5}


def _fill(store: AnswerStore, split: str, n: int, rng: np.random.Generator) -> None:
    for row in list(headlines(split))[:n]:
        for tier, skill in (("small", 0.6), ("large", 0.85)):
            right = rng.random() < skill
            answer = row.label if right else LABELS[(LABELS.index(row.label) + 1) % len(LABELS)]
            confident = rng.random() < (0.8 if right else 0.3)
            logprobs = {label: (-0.1 if label == answer and confident else -1.5) for label in LABELS}
            record = AnswerRecord(query=row.query, answer=answer, tier=tier, label_logprobs=logprobs,
                                  correct=right, query_id=row.id, cost=COSTS[tier])
            store.put(tier, "synthetic", f"{tier}-{split}-{row.id}", split, record, 10, 1, 1.0)


@pytest.mark.slow  # trains the scorer with cross-validation and loads MiniLM: ~1 min
def test_train_then_eval_cascade_writes_the_routing_table(tmp_path):
    rng = np.random.default_rng(0)
    db = tmp_path / "answers.sqlite"
    store = AnswerStore(db)
    _fill(store, "train", 80, rng)
    _fill(store, "dev", 60, rng)
    store.close()
    runner = CliRunner()
    trained = runner.invoke(app, ["router", "train", "--answers", str(db), "--out", str(tmp_path / "scorer")])
    assert trained.exit_code == 0, trained.output
    assert "dev small: n=60" in trained.output and "AUROC=" in trained.output
    evaluate = ["eval", "cascade", "--answers", str(db), "--scorer", str(tmp_path / "scorer"),
                "--workload", str(HEADLINES / "dev.jsonl"), "--pool", str(HEADLINES / "train.jsonl")]
    result = runner.invoke(app, [*evaluate, "--out", str(tmp_path / "out" / "routing.json")])
    assert result.exit_code == 0, result.output
    table = json.loads((tmp_path / "out" / "routing.json").read_text())
    assert table["fit_scores"] == "out-of-fold"  # the scorer trained on train: thresholds fit held-out scores
    assert set(table["scorer_metrics"]) == {"small", "large"} and "scorer on dev small: n=60" in result.output
    names = [row["name"] for row in table["rows"]]
    assert {"small-only", "large-only", "oracle", "knn-vote", "minilm-probe"} <= set(names)
    cascades = [row for row in table["rows"] if row["name"].startswith("cascade@")]
    assert cascades and all(row["fit_cost_per_query"] <= row["budget_per_query"] * (1 + 1e-9) for row in cascades)
    assert (tmp_path / "out" / "routing.png").stat().st_size > 0
    same = runner.invoke(app, [*evaluate, "--split", "train", "--out", str(tmp_path / "out" / "routing.json")])
    assert same.exit_code != 0 and "in-sample" in same.output

    # A fitted policy whose tiers are all no-LLM models: its row is compared with the best tier alone.
    policy = tmp_path / "no-llm.yaml"
    policy.write_text(
        "tiers:\n"
        "  - {name: small, address: 127.0.0.1:1, model: knn-vote, cost: {per_call: 1.0e-7}}\n"
        "  - {name: large, address: 127.0.0.1:2, model: minilm-probe, cost: {per_call: 1.0e-5}}\n"
        "cascade: {order: [small, large], thresholds: {small: 0.5}}\n"
    )
    with_policy = runner.invoke(app, [*evaluate, "--policy", str(policy), "--out", str(tmp_path / "p" / "routing.json")])
    assert with_policy.exit_code == 0, with_policy.output
    table = json.loads((tmp_path / "p" / "routing.json").read_text())
    assert table["gains_against"] == "best single tier" and "policy" in [row["name"] for row in table["rows"]]
