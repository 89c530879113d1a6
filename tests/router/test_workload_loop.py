"""The whole learning loop through the CLI on a synthetic workload: collect -> train -> fit -> eval.

Two tiny in-process models (and, on the label task, the knn-vote tier) answer a label task and
a free-form task written to a workload file in the test; nothing here knows any dataset.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from tierlm.app.cli import app
from tierlm.config import load_policy
from tierlm.router.study.collect import AnswerStore
from tierlm.router.workload import write_workload

WORDS = {"hot": ["sunny", "warm", "heat"], "cold": ["snow", "frost", "chill"]}


def label_rows() -> list[dict]:
    rows = []
    for i in range(48):
        label = "hot" if i % 2 else "cold"
        word = WORDS[label][i % 3]
        rows.append({"id": f"l{i}", "prompt": f"the day was {word} number {i}", "reference": label,
                     "choices": ["hot", "cold"], "split": "train" if i < 32 else "test"})
    return rows


def free_form_rows() -> list[dict]:
    return [{"id": f"f{i}", "prompt": f"Repeat the word {w}", "reference": [w, f"{w}."], "judge": "token_f1",
             "max_tokens": 3, "split": "train" if i < 16 else "test"}
            for i, w in enumerate(["alpha", "beta", "gamma", "delta"] * 6)]


def policy_for(tmp_path: Path, workload: Path, llama_dir: Path, gemma_dir: Path, labels: list[str] | None,
               encoder: str = "minilm") -> Path:
    prompt = {"selection": "retrieved", "k": 2, "template": "Text: {query}\nAnswer:"}
    if labels:
        prompt["labels"] = labels
    tiers = [
        {"name": "small", "address": "127.0.0.1:1", "model": str(llama_dir), "cost": {"per_input_token": 1e-8}, "prompt": prompt},
        {"name": "large", "address": "127.0.0.1:1", "model": str(gemma_dir), "cost": {"per_input_token": 1e-6}, "prompt": prompt},
    ]
    if labels:
        tiers.insert(0, {"name": "knn", "address": "127.0.0.1:1", "model": "knn-vote", "cost": {"per_call": 1e-9}})
    path = tmp_path / "policy.yaml"
    path.write_text(yaml.safe_dump({"tiers": tiers, "cascade": {"order": [t["name"] for t in tiers]}, "pool": str(workload),
                                    "encoder": encoder}))
    return path


def run(*args: str) -> str:
    result = CliRunner().invoke(app, [*args])
    assert result.exit_code == 0, result.output
    return result.output


@pytest.mark.slow  # two tiny models answer ~100 requests, MiniLM embeds, the scorer cross-validates: ~1 min
@pytest.mark.parametrize(("task", "encoder"), [("labels", "minilm"), ("free-form", "minilm"), ("labels", "static")])
def test_collect_train_fit_eval_on_any_workload(task: str, encoder: str, tmp_path: Path, llama_dir: Path, gemma_dir: Path) -> None:
    workload = tmp_path / "workload.jsonl"
    rows = label_rows() if task == "labels" else free_form_rows()
    write_workload(rows, workload)
    policy = policy_for(tmp_path, workload, llama_dir, gemma_dir, ["hot", "cold"] if task == "labels" else None, encoder)
    answers, scorer, fitted = tmp_path / "answers.sqlite", tmp_path / "scorer", tmp_path / "fitted.yaml"
    for split in ("train", "test"):
        run("router", "collect", "--policy", str(policy), "--workload", str(workload), "--split", split, "--out", str(answers))
    store = AnswerStore(answers)
    train_records, test_records = store.records("train"), store.records("test")
    store.close()
    tiers = 3 if task == "labels" else 2
    per_split = {split: sum(r["split"] == split for r in rows) for split in ("train", "test")}
    assert (len(train_records), len(test_records)) == (tiers * per_split["train"], tiers * per_split["test"])
    if task == "free-form":
        assert all(r.label_logprobs is None and r.token_logprobs for r in train_records)  # generated, not label choice

    run("router", "train", "--answers", str(answers), "--out", str(scorer), "--split", "train", "--report-split", "test",
        "--policy", str(policy))
    # The scorer's features come from the policy's encoder, and it records which.
    assert (":static-v" in json.loads((scorer / "scorer.json").read_text())["encoder"]) == (encoder == "static")
    out = run("router", "fit", "--policy", str(policy), "--answers", str(answers), "--scorer", str(scorer),
              "--budget-share", "0.5", "--out", str(fitted))
    assert "(out-of-fold)" in out
    fitted_policy = load_policy(fitted)
    assert fitted_policy.scorer is not None and fitted_policy.scorer.path == scorer
    assert "out-of-fold scores" in fitted.read_text() and set(fitted_policy.cascade.order) <= {"knn", "small", "large"}
    too_little = CliRunner().invoke(app, ["router", "fit", "--policy", str(policy), "--answers", str(answers), "--scorer",
                                          str(scorer), "--budget", "1e-15", "--out", str(tmp_path / "never.yaml")])
    assert too_little.exit_code == 1 and "is below the cheapest cascade" in too_little.stderr
    assert not (tmp_path / "never.yaml").exists()

    result = tmp_path / "routing.json"
    run("eval", "cascade", "--answers", str(answers), "--scorer", str(scorer), "--workload", str(workload),
        "--split", "test", "--fit-split", "train", "--policy", str(fitted), "--out", str(result))
    table = json.loads(result.read_text())
    names = {row["name"] for row in table["rows"]}
    assert {"small-only", "large-only", "oracle", "policy"} <= names and any(n.startswith("cascade@") for n in names)
    policy_row = next(row for row in table["rows"] if row["name"] == "policy")
    assert policy_row["policy"]["order"] == fitted_policy.cascade.order and "fit_accuracy" in policy_row
    assert policy_row["gain_vs_best_single"]["tier"] in {"small", "large"}  # language-model tiers only
    assert ("knn-vote" in names) == (task == "labels")  # a label vote means nothing for free-form answers
    assert result.with_suffix(".png").stat().st_size > 0


def test_a_malformed_workload_writes_nothing(tmp_path: Path, llama_dir: Path, gemma_dir: Path) -> None:
    workload = tmp_path / "workload.jsonl"
    workload.write_text('{"id": "1", "prompt": "p", "reference": "x"}\n{"id": "1", "prompt": "q"}\n')
    policy = policy_for(tmp_path, tmp_path / "pool-is-unused.jsonl", llama_dir, gemma_dir, None)
    answers = tmp_path / "answers.sqlite"
    result = CliRunner().invoke(app, ["router", "collect", "--policy", str(policy), "--workload", str(workload), "--out", str(answers)])
    assert result.exit_code != 0
    assert f"{workload}:2: reference: Field required" in str(result.exception) + result.output
    assert not answers.exists()
