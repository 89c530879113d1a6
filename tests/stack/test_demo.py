"""`tierlm demo` end to end on tiny models: the stack, the SDK queries, the table, the files."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tierlm.app.demo_steps import ModeResult, Narrator, ensure_models
from tierlm.config import parse_policy
from tierlm.errors import MissingResource

from tests.support.workloads import LABELS

REPO = Path(__file__).resolve().parents[2]


def test_mode_result_row_counts_failures_as_wrong():
    result = ModeResult("cascade", correct=2, failed=1, costs=[1.0, 3.0, 2.0], latencies_ms=[10.0, 20.0, 30.0])
    result.tiers.update({"knn": 2, "cloud": 1})
    row = result.row()
    assert row["queries"] == 4 and row["accuracy"] == 0.5 and row["cost_per_query"] == 2.0
    assert row["answered"] == {"knn": 0.5, "cloud": 0.25}
    assert row["latency_ms_p50"] == 20.0


def test_a_missing_artifact_that_cannot_be_built_is_named(tmp_path):
    policy = parse_policy(yaml.safe_dump({
        "tiers": [{"name": "edge", "address": "127.0.0.1:5", "model": str(tmp_path / "nowhere" / "w8a8"),
                   "launch": {"runtime": "edge"}}],
        "cascade": {"order": ["edge"]}}))
    with pytest.raises(MissingResource, match="nowhere"):
        ensure_models(policy, Narrator(io.StringIO()))


def test_a_vllm_export_names_the_artifact_it_would_be_built_from(tmp_path):
    export = tmp_path / "vllm" / "nowhere" / "demo-w8a8-plain"
    policy = parse_policy(yaml.safe_dump({
        "tiers": [{"name": "cloud", "address": "127.0.0.1:5", "model": str(export),
                   "launch": {"runtime": "cloud", "engine": "vllm"}}],
        "cascade": {"order": ["cloud"]}}))
    with pytest.raises(MissingResource, match=str(tmp_path / "artifacts" / "nowhere" / "demo-w8a8-plain")):
        ensure_models(policy, Narrator(io.StringIO()))
    assert not export.exists()


def test_demo_routes_dev_queries_and_writes_its_table_and_plot(tmp_path, llama_dir, gemma_dir):
    def tier(name: str, model, cost: float) -> dict:
        return {"name": name, "address": "127.0.0.1:1", "model": str(model), "cost": {"per_input_token": cost},
                "prompt": {"selection": "fixed", "k": 0, "labels": list(LABELS)}, "launch": {"runtime": "edge", "max_batch": 4}}

    policy = tmp_path / "policy.yaml"
    policy.write_text(yaml.safe_dump({"tiers": [tier("edge", llama_dir, 1e-9), tier("cloud", gemma_dir, 1e-7)],
                                      "cascade": {"order": ["edge", "cloud"], "thresholds": {"edge": 0.5}}}))
    committed = REPO / "bench" / "results" / "demo.json"
    before = committed.stat().st_mtime_ns
    run = tmp_path / "run"
    demo = subprocess.run([sys.executable, "-m", "tierlm.app.cli", "demo", "--policy", str(policy), "--queries", "12",
                           "--concurrency", "4", "--run-dir", str(run)],
                          capture_output=True, text=True, timeout=600, cwd=REPO)
    assert demo.returncode == 0, demo.stderr[-3000:]
    assert "cascade" in demo.stdout and "edge-only" in demo.stdout and "of cloud-only's cost" in demo.stdout
    # It says what it does while it works: each service as it comes up, each pass and its progress.
    said = demo.stderr
    for line in ("edge ready on 127.0.0.1:", "router ready on 127.0.0.1:", "pass 1 of 2: edge-only and cloud-only",
                 "edge-only: 12/12 queries", "cloud-only: 12/12 queries", "pass 2 of 2: the cascade", "cascade: 12/12 queries"):
        assert line in said, said
    # The results go to the run folder; the committed ones are left alone.
    assert committed.stat().st_mtime_ns == before
    rows = {r["name"]: r for r in json.loads((run / "demo.json").read_text())["rows"]}
    assert set(rows) == {"edge-only", "cloud-only", "cascade"}
    assert rows["edge-only"]["answered"] == {"edge": 1.0} and rows["cloud-only"]["answered"] == {"cloud": 1.0}
    assert all(r["queries"] == 12 and r["failed"] == 0 for r in rows.values())
    # Forced to the dearer tier, every query pays its price; the cascade pays it only when it escalates.
    assert rows["cascade"]["cost_per_query"] <= rows["cloud-only"]["cost_per_query"]
    assert (run / "demo_cost_accuracy.png").stat().st_size > 0


def test_the_narrator_reports_each_tenth_once() -> None:
    stream = io.StringIO()
    say = Narrator(stream)
    for done in range(1, 26):
        say.progress("edge-only", done, 25, "queries")
    say("done")
    lines = [line.split("] ", 1)[1] for line in stream.getvalue().splitlines()]
    assert lines == [*(f"edge-only: {n}/25 queries" for n in (3, 5, 8, 10, 13, 15, 18, 20, 23, 25)), "done"]
