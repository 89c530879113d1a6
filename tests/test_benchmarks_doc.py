"""docs/benchmarks.md is generated from bench/results/*.json: the committed page must be what
the committed results produce (a stale number fails here, not in a reader's hands)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_benchmarks_page_matches_the_results():
    checked = subprocess.run([sys.executable, "bench/report.py", "--check"], cwd=REPO, capture_output=True, text=True)
    assert checked.returncode == 0, checked.stderr


def test_the_page_follows_the_numbers(tmp_path):
    import importlib.util

    spec = importlib.util.spec_from_file_location("report", REPO / "bench" / "report.py")
    report = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(report)
    results = tmp_path / "results"
    results.mkdir()
    (results / "store.json").write_text(
        '{"bench": "store", "machine": "m", "date": "d", "command": "c", "rows": [{"name": "a", "ops_s": 1000.5}]}'
    )
    page = report.render(results)
    assert "| name | ops_s |" in page and "| a | 1000 |" in page and "`c`" in page
    (results / "store.json").write_text(
        '{"bench": "store", "machine": "m", "date": "d", "command": "c", "rows": [{"name": "a", "ops_s": 2000.5}]}'
    )
    assert "| a | 2000 |" in report.render(results)
