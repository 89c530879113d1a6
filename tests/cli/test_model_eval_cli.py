"""The `model` and `eval` command groups, driven through typer's test runner."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tierlm.app.cli import app
from tierlm.app.commands import eval as eval_commands
from tierlm.app.commands import model as model_commands

runner = CliRunner()


@pytest.mark.parametrize(
    ("app", "args", "expected"),
    [
        (model_commands.app, ["--help"], "prepare"),
        (model_commands.app, ["prepare", "--help"], "--cache-dir"),
        (eval_commands.app, ["--help"], "ppl"),
        (eval_commands.app, ["ppl", "--help"], "--stride"),
    ],
)
def test_help(app, args: list[str], expected: str) -> None:
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert expected in result.output


def test_model_list_names_every_registered_model(tmp_path: Path) -> None:
    result = runner.invoke(model_commands.app, ["list", "--cache-dir", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert "gemma-3-270m" in result.output and "smollm2-135m" in result.output


def test_model_prepare_rejects_an_unknown_name(tmp_path: Path) -> None:
    result = runner.invoke(app, ["model", "prepare", "nope", "--cache-dir", str(tmp_path)])
    assert result.exit_code == 4
    assert result.stderr.startswith("Error: unknown model 'nope'; known: gemma-3-270m, smollm2-135m")


def test_eval_ppl_json_on_a_folder(tiny_folder: Path, tmp_path: Path) -> None:
    text = tmp_path / "text.txt"
    text.write_text("the cat in a hat sat on the mat. " * 30)
    args = ["ppl", "--model", str(tiny_folder), "--text", str(text), "--context", "64", "--stride", "32",
            "--max-tokens", "200", "--threads", "1", "--json"]
    result = runner.invoke(eval_commands.app, args)
    assert result.exit_code == 0, result.output
    record = json.loads(result.stdout.strip().splitlines()[-1])
    assert record["tokens"] == 199 and record["context"] == 64 and record["stride"] == 32
    assert math.isfinite(record["ppl"]) and record["ppl"] == pytest.approx(math.exp(record["nll"]))


def test_eval_ppl_rejects_a_stride_longer_than_the_context(tiny_folder: Path, tmp_path: Path) -> None:
    text = tmp_path / "text.txt"
    text.write_text("the cat " * 50)
    args = ["ppl", "--model", str(tiny_folder), "--text", str(text), "--context", "16", "--stride", "17"]
    result = runner.invoke(eval_commands.app, args)
    assert result.exit_code == 2
