"""The policy file: the example validates, and each broken file names its field and line."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from tierlm.app.cli import app
from tierlm.config import PolicyError, load_policy, parse_policy

REPO = Path(__file__).resolve().parents[1]
BROKEN = REPO / "tests" / "fixtures" / "policies"
runner = CliRunner()

# file -> the `line: field` the message must name, and a word of the explanation.
CASES = {
    "unknown_field.yaml": ("4: tiers[0].timeout_secs", "Extra inputs are not permitted"),
    "negative_cost.yaml": ("6: tiers[0].cost.per_output_token", "greater than or equal to 0"),
    "duplicate_tier.yaml": ("6: tiers[2].name", "duplicate tier name 'edge'"),
    "threshold_range.yaml": ("9: cascade.thresholds.edge", "less than or equal to 1"),
    "unknown_cascade_tier.yaml": ("9: cascade.order[1]", "unknown tier 'clod'"),
}


def test_example_policy_validates():
    result = runner.invoke(app, ["policy", "validate", str(REPO / "examples" / "policy.yaml")])
    assert result.exit_code == 0, result.output
    assert result.output.startswith("OK")
    policy = load_policy(REPO / "examples" / "policy.yaml")
    assert policy.cascade.order == ["edge", "cloud"]
    assert policy.tier("cloud").cost.cost(input_tokens=10, output_tokens=5) == pytest.approx(10 * 1e-7 + 5 * 4e-7)


@pytest.mark.parametrize("name", sorted(CASES))
def test_broken_policy_names_field_and_line(name):
    where, why = CASES[name]
    path = BROKEN / name
    result = runner.invoke(app, ["policy", "validate", str(path)])
    assert result.exit_code == 3
    assert f"{path}:{where}" in result.output
    assert why in result.output


def test_every_problem_is_reported_not_just_the_first():
    text = "tiers:\n  - {name: edge, address: 'nope'}\ncascade: {order: [edge], thresholds: {edge: 0.5}}\n"
    with pytest.raises(PolicyError) as err:
        parse_policy(text)
    assert [p.path for p in err.value.problems] == [("tiers", 0, "address")]
    text = text.replace("'nope'", "'127.0.0.1:1'")
    with pytest.raises(PolicyError, match="last stage, which always accepts"):
        parse_policy(text)


def test_yaml_problems_are_reported_with_their_line(tmp_path):
    broken = tmp_path / "broken.yaml"
    broken.write_text("tiers:\n  - name: [edge\n")
    result = runner.invoke(app, ["policy", "validate", str(broken)])
    assert result.exit_code == 3
    assert "not valid YAML" in result.output
    with pytest.raises(ValueError, match="line 3: duplicate key 'tiers'"):
        parse_policy("tiers: []\ncascade: {order: [a]}\ntiers: []\n")


def test_hash_key_matches_what_the_policy_stores():
    result = runner.invoke(app, ["policy", "hash-key", "--key", "acme-demo-key"])
    assert result.exit_code == 0
    assert load_policy(REPO / "examples" / "policy.yaml").tenants["acme"].key_sha256 == result.output.strip()


MODEL_ROUTES = """\
tiers:
  - {name: edge, address: "127.0.0.1:1"}
  - {name: cloud, address: "127.0.0.1:2"}
cascade:
  order: [edge, cloud]
models:
  tierlm: {}
  fast:
    max_tier: cloud
    force_tier: edge
  only-gpu:
    force_tier: gpu
"""


def test_model_routes_are_validated_with_their_lines():
    with pytest.raises(PolicyError) as error:
        parse_policy(MODEL_ROUTES, "models.yaml")
    report = str(error.value)
    assert "models.yaml:8: models.fast: set force_tier or max_tier, not both" in report
    assert "models.yaml:12: models.only-gpu.force_tier: unknown tier 'gpu'" in report
    with pytest.raises(PolicyError, match=r"models.yaml:7: models.bad name!.*should match pattern"):
        parse_policy(MODEL_ROUTES.replace("  tierlm: {}", '  "bad name!": {}'), "models.yaml")


def test_model_routes_default_to_the_cascade_and_each_tier():
    policy = parse_policy(MODEL_ROUTES.split("models:")[0])
    routes = policy.model_routes()
    assert list(routes) == ["cascade", "edge", "cloud"]
    assert routes["cascade"].force_tier is None and routes["edge"].force_tier == "edge"


def test_validate_checks_the_files_the_policy_names(tmp_path, monkeypatch):
    """Scorer folder, pool, fixed prompt, CA file and model folders must exist, each named by its line."""
    monkeypatch.chdir(tmp_path)  # relative paths are read from the working folder, as the router does
    policy = tmp_path / "policy.yaml"
    policy.write_text(
        "tiers:\n"
        "  - name: edge\n"
        "    address: 127.0.0.1:50061\n"
        "    model: ./models/edge\n"
        "    prompt: {selection: fixed, k: 1, fixed_prompt: prompts/edge.txt}\n"
        "  - name: cloud\n"
        "    address: 127.0.0.1:50071\n"
        "    model: gemma-3-270m\n"
        "    tls: {ca_file: ca.pem}\n"
        "pool: pool.jsonl\n"
        "scorer: {path: scorer}\n"
        "cascade: {order: [edge, cloud], thresholds: {edge: 0.5}}\n"
    )
    result = runner.invoke(app, ["policy", "validate", str(policy)])
    assert result.exit_code == 3 and isinstance(result.exception, SystemExit)
    lines = result.stderr.splitlines()
    assert len(lines) == 5 and lines[0].startswith(f"Error: {policy}:4: ")  # in the file's order
    for line, field, target in [(4, "tiers[0].model", "folder: models/edge"), (5, "tiers[0].prompt.fixed_prompt", "file: prompts/edge.txt"),
                                (9, "tiers[1].tls.ca_file", "file: ca.pem"), (10, "pool", "file: pool.jsonl"),
                                (11, "scorer.path", "folder: scorer")]:
        assert f"{policy}:{line}: {field}: no such {target} (from {tmp_path})" in result.stderr
    assert "gemma-3-270m" not in result.stderr  # a registered model name is no path

    (tmp_path / "models" / "edge").mkdir(parents=True)
    (tmp_path / "scorer").mkdir()
    result = runner.invoke(app, ["policy", "validate", str(policy)])
    assert f"{policy}:4: tiers[0].model: not a model folder (no config.json): models/edge" in result.stderr
    assert f"{policy}:11: scorer.path: not a scorer folder (no scorer.json): scorer" in result.stderr

    (tmp_path / "models" / "edge" / "config.json").write_text("{}")
    (tmp_path / "scorer" / "scorer.json").write_text("{}")
    (tmp_path / "prompts").mkdir()
    (tmp_path / "prompts" / "edge.txt").write_text("Q: up?\nA: up\n")
    (tmp_path / "ca.pem").write_text("")
    row = '{"id": "1", "prompt": "Gold rises", "reference": "up", "choices": ["up", "down"]}\n'
    (tmp_path / "pool.jsonl").write_text(row + '{"id": "2", "prompt": "Gold falls"}\n')
    result = runner.invoke(app, ["policy", "validate", str(policy)])
    assert result.exit_code == 3  # the files exist; the pool's second row is not a workload row
    assert result.stderr == "Error: pool.jsonl:2: reference: Field required\n"

    (tmp_path / "pool.jsonl").write_text(row)
    result = runner.invoke(app, ["policy", "validate", str(policy)])
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith(f"OK: {policy}: 2 tiers")
