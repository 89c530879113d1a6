"""Answer collection on a tiny in-process model: stores every answer once and resumes."""

from __future__ import annotations

import yaml
from typer.testing import CliRunner

from tierlm.app.cli import app
from tierlm.router.study.collect import AnswerStore
from tierlm.router.workload import write_workload

from tests.support.workloads import LABELS

HEADLINES = [
    ("gold rises 2% on weak dollar", "up"),
    ("gold slips as yields climb", "down"),
    ("gold steady ahead of fed minutes", "neutral"),
    ("india to review gold import rules", "none"),
    ("gold jumps to two-week high", "up"),
    ("gold falls for third day", "down"),
]


def test_collect_stores_answers_and_resumes(tmp_path, llama_dir):
    data = tmp_path / "mini.jsonl"
    write_workload([{"id": str(i), "prompt": text, "reference": label, "choices": LABELS}
                    for i, (text, label) in enumerate(HEADLINES)], data)
    policy = tmp_path / "policy.yaml"
    policy.write_text(yaml.safe_dump({
        "tiers": [{"name": "tiny", "address": "127.0.0.1:1", "model": str(llama_dir), "cost": {"per_input_token": 1e-6},
                   "prompt": {"selection": "balanced", "k": 1, "instruction": "Direction?", "labels": list(LABELS)}}],
        "cascade": {"order": ["tiny"]},
        "pool": str(data),
    }))
    store_path = tmp_path / "answers.sqlite"
    args = ["router", "collect", "--policy", str(policy), "--workload", str(data), "--out", str(store_path)]
    first = CliRunner().invoke(app, args)
    assert first.exit_code == 0, first.output
    assert "tiny +6 answers on mini.jsonl split mini" in first.output
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


def test_records_keep_only_the_latest_answer_per_tier_and_query(tmp_path):
    from tierlm.router.learn.records import AnswerRecord

    store = AnswerStore(tmp_path / "answers.sqlite")
    for model, prompt, answer in (("m1", "p1", "up"), ("m2", "p1", "down"), ("m2", "p2", "none")):
        record = AnswerRecord(query="q", answer=answer, tier="edge", correct=True, query_id="1")
        store.put("edge", model, f"{model}-{prompt}", "train", record, 1, 1, 1.0)
    store.put("cloud", "big", "x", "train", AnswerRecord(query="q", answer="up", tier="cloud", correct=True, query_id="1"), 1, 1, 1.0)
    records = store.records("train")
    store.close()
    # Another model, then another prompt, were collected for edge: only the latest counts, once.
    assert sorted((r.tier, r.answer) for r in records) == [("cloud", "up"), ("edge", "none")]
