"""Recipe files: validation errors name the field and line; rules, skips and shipped examples."""

from __future__ import annotations

from pathlib import Path

import pytest

from tierlm.kernels.recipe import RecipeError, load_recipe, parse_recipe

EXAMPLES = sorted((Path(__file__).resolve().parents[2] / "examples" / "recipes").glob("*.yaml"))

GOOD = """\
name: mixed
rules:
  - match: "layers.*.mlp.*"
    method: gptq
    options: {bits: 4, group_size: 32}
  - match: ["layers.*"]
    method: rtn
skip: ["layers.0.*"]
embedding: {method: nf4}
"""


def test_rules_first_match_wins_and_skip_overrides() -> None:
    recipe = parse_recipe(GOOD)
    assert recipe.rule_for("layers.1.mlp.up_proj").method == "gptq"
    assert recipe.rule_for("layers.1.self_attn.q_proj").method == "rtn"
    assert recipe.rule_for("layers.0.mlp.up_proj") is None
    assert recipe.rule_for("lm_head") is None
    assert recipe.calibration_needs() == {"hessian"}


@pytest.mark.parametrize(
    ("text", "line", "fragment"),
    [
        ("name: x\nrules:\n  - match: '*'\n    method: nope\n", 3, "unknown quantizer 'nope'"),
        ("name: x\nrules:\n  - match: '*'\n    method: rtn\n    options: {bitz: 4}\n", 3, "bitz"),
        ("name: x\nrules:\n  - match: '*'\n    method: rtn\n    options: {bits: 7}\n", 3, "bits"),
        ("name: x\nrules: []\nembedding: {method: nf4, options: {block_size: 3}}\n", 3, "block_size"),
        ("name: x\nrules:\n  - match: []\n    method: rtn\n", 3, "pattern"),
        ("name: x\nrulez: []\n", 2, "rulez"),
        ("name: x\n", 1, "compresses nothing"),
        ("name: 'bad name'\nrules:\n  - {match: '*', method: rtn}\n", 1, "name"),
        ("name: x\ncalibration: {sequences: 0}\nrules:\n  - {match: '*', method: rtn}\n", 2, "sequences"),
    ],
)
def test_invalid_recipes_name_field_and_line(text: str, line: int, fragment: str) -> None:
    with pytest.raises(RecipeError) as info:
        parse_recipe(text, source="r.yaml")
    message = str(info.value)
    assert f"r.yaml:{line}:" in message, message
    assert fragment in message, message


def test_not_a_mapping() -> None:
    with pytest.raises(RecipeError, match="expected a mapping"):
        parse_recipe("- rtn\n")


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.stem)
def test_shipped_recipes_validate(path: Path) -> None:
    recipe = load_recipe(path)
    assert recipe.name == path.stem
    if recipe.mixed_precision is not None:  # the plan writes the rules and the table's method
        assert len(recipe.mixed_precision.candidates) > 1
        return
    assert recipe.rule_for("layers.3.mlp.down_proj") is not None
    # Quantization recipes compress the table too; pruning and low-rank rows keep it dense so
    # they measure their method alone (the composites compress everything).
    full_composite = recipe.name.startswith("composite")
    assert (recipe.embedding is not None) == (recipe.rules[0].method != "composite" or full_composite)


def test_the_issue_recipes_ship() -> None:
    assert {p.stem for p in EXAMPLES} >= {"rtn-w4g128", "awq-w4g128", "gptq-w4g128", "w8a8", "nf4"}
    assert {p.stem for p in EXAMPLES} >= {
        "magnitude-50", "wanda-50", "sparsegpt-50", "magnitude-2of4", "sparsegpt-2of4", "svd-20", "asvd-20", "composite"
    }
