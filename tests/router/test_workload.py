"""Workload files: validation with line-numbered errors, splits, judges, the shipped workloads."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tierlm.app.cli import app
from tierlm.router.workload import WorkloadError, json_schema, load_workload, write_workload

from tests.support.workloads import HEADLINES

ROOT = Path(__file__).resolve().parents[2]


def write(path: Path, *lines: str) -> Path:
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_rows_splits_and_default_judges(tmp_path: Path) -> None:
    path = write(
        tmp_path / "train.jsonl",
        '{"id": "a", "prompt": "gold up?", "reference": "up", "choices": ["up", "down"]}',
        '{"id": "b", "prompt": "Who?", "reference": ["Bach", "J. S. Bach"], "split": "test"}',
        '{"id": "c", "messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": "2+2?"}], '
        '"reference": "4", "judge": {"name": "numeric", "tolerance": 0}}',
    )
    workload = load_workload(path)
    assert workload.splits == ["train", "test"] and [r.id for r in workload.split("train")] == ["a", "c"]
    a, b, c = workload.rows
    assert (a.judge_spec.name, b.judge_spec.name, c.judge_spec.name) == ("choice", "normalized", "numeric")
    assert c.query == "2+2?" and b.reference == ("Bach", "J. S. Bach")
    assert workload.judge_for(b).correct("J. S. Bach.", b.reference)
    assert workload.judge_for(c).correct("It is 4", c.reference) and not workload.judge_for(c).correct("5", c.reference)


def test_every_problem_is_reported_with_its_line(tmp_path: Path) -> None:
    path = write(
        tmp_path / "bad.jsonl",
        '{"id": "1", "prompt": "fine", "reference": "x"}',
        '{"id": "2", "prompt": "broken", "reference": ',
        '{"id": "3", "reference": "no input"}',
        '{"id": "4", "prompt": "p", "reference": "x", "judge": "vibes"}',
        '{"id": "5", "prompt": "p", "reference": ["", "y"]}',
        '{"id": "1", "prompt": "again", "reference": "x"}',
        '["not", "an", "object"]',
        '{"id": "8", "prompt": "p", "reference": "x", "colour": "red"}',
        '{"id": "9", "prompt": "p", "reference": "x", "judge": {"name": "numeric", "tolerance": -1}}',
    )
    with pytest.raises(WorkloadError) as error:
        load_workload(path)
    lines = str(error.value).splitlines()
    assert lines == [
        f"{path}:2: (line): invalid JSON: Expecting value at column 46",
        f"{path}:3: (row): Value error, give exactly one of `prompt` and `messages`",
        f"{path}:4: judge: unknown judge 'vibes'; known: ['choice', 'contains', 'exact', 'normalized', 'numeric', 'regex', 'token_f1']",
        f"{path}:5: reference: Value error, a reference answer is empty",
        f"{path}:6: id: duplicate id '1' (first on line 1)",
        f"{path}:7: (line): expected a JSON object, got list",
        f"{path}:8: colour: Extra inputs are not permitted",
        f"{path}:9: judge: bad options for judge 'numeric': tolerance must be >= 0, got -1",
    ]


def test_empty_and_non_utf8_files_are_refused(tmp_path: Path) -> None:
    with pytest.raises(WorkloadError, match=r":1: \(file\): no rows"):
        load_workload(write(tmp_path / "empty.jsonl", ""))
    (tmp_path / "latin.jsonl").write_bytes(b'{"id": "1", "prompt": "caf\xe9", "reference": "x"}\n')
    with pytest.raises(WorkloadError, match="not UTF-8"):
        load_workload(tmp_path / "latin.jsonl")


def test_the_check_command_reports_and_fails_with_nothing_else(tmp_path: Path) -> None:
    bad = write(tmp_path / "bad.jsonl", '{"id": "1", "prompt": "p"}')
    result = CliRunner().invoke(app, ["workload", "check", str(bad)])
    assert result.exit_code == 3 and result.stderr == f"Error: {bad}:1: reference: Field required\n"
    good = CliRunner().invoke(app, ["workload", "check", str(HEADLINES / "dev.jsonl")])
    assert good.exit_code == 0 and "2500 rows (dev 2500); judges: choice" in good.output


def test_the_committed_schema_is_the_models(tmp_path: Path) -> None:
    committed = json.loads((ROOT / "docs" / "workload.schema.json").read_text())
    assert committed == json_schema(), "regenerate: tierlm workload schema > docs/workload.schema.json"
    printed = CliRunner().invoke(app, ["workload", "schema"])
    assert json.loads(printed.output) == committed


def test_written_rows_load_back(tmp_path: Path) -> None:
    rows = [{"id": "q", "prompt": "p", "reference": "r", "metadata": {"k": 1}}]
    write_workload(rows, tmp_path / "w.jsonl")
    (row,) = load_workload(tmp_path / "w.jsonl").rows
    assert row.reference == ("r",) and row.metadata == {"k": 1}


@pytest.mark.parametrize(
    ("folder", "counts", "judge"),
    [("headlines", {"train": 5000, "dev": 2500}, "choice"), ("snips", {"train": 700, "test": 700}, "choice"),
     ("xquad", {"train": 612, "test": 578}, "token_f1")],
)
def test_shipped_workloads_load(folder: str, counts: dict[str, int], judge: str) -> None:
    for split, n in counts.items():
        workload = load_workload(ROOT / "data" / "workloads" / folder / f"{split}.jsonl")
        assert len(workload.split(split)) == n and {r.judge_spec.name for r in workload} == {judge}
    assert (ROOT / "data" / "workloads" / folder / "SOURCE.md").is_file()
