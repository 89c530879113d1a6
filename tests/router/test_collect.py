"""Answer collection on a tiny in-process model: stores every answer once and resumes."""

from __future__ import annotations

import csv

import yaml
from typer.testing import CliRunner

from tierlm.cli import app
from tierlm.router.collect import AnswerStore

HEADLINES = [
    ("gold rises 2% on weak dollar", "up"),
    ("gold slips as yields climb", "down"),
    ("gold steady ahead of fed minutes", "neutral"),
    ("india to review gold import rules", "none"),
    ("gold jumps to two-week high", "up"),
    ("gold falls for third day", "down"),
]


def test_collect_stores_answers_and_resumes(tmp_path, llama_dir):
    data = tmp_path / "mini.csv"
    with data.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["query", "answer", "id"])
        for i, (headline, label) in enumerate(HEADLINES):
            writer.writerow([f"Q: {headline}\nA:", label, str(i)])
    policy = tmp_path / "policy.yaml"
    policy.write_text(yaml.safe_dump({
        "tiers": [{"name": "tiny", "address": "127.0.0.1:1", "model": str(llama_dir),
                   "cost": {"per_input_token": 1e-6}, "prompt": {"selection": "balanced", "k": 1, "instruction": "Direction?"}}],
        "cascade": {"order": ["tiny"]},
    }))
    store_path = tmp_path / "answers.sqlite"
    args = ["router", "collect", "--tiers", str(policy), "--data", str(data), "--out", str(store_path)]
    first = CliRunner().invoke(app, args)
    assert first.exit_code == 0, first.output
    assert "tiny +6 answers on mini (6 rows)" in first.output
    store = AnswerStore(store_path)
    records = store.records("mini")
    store.close()
    assert len(records) == 6
    for record, (_, label) in zip(sorted(records, key=lambda r: int(r.query_id)), HEADLINES):
        assert set(record.label_logprobs) == {"up", "down", "neutral", "none"}
        assert record.answer == max(record.label_logprobs, key=record.label_logprobs.get)
        assert record.correct == (record.answer == label)
        assert record.cost > 0
    again = CliRunner().invoke(app, args)
    assert again.exit_code == 0 and "tiny +0 answers" in again.output
