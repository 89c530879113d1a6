"""Mixed precision by sensitivity: the Fisher pass equals transformers' gradients, the allocation
spends the budget where the estimate says, and a planned artifact reloads with identical logits."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import pytest
import torch

from tierlm.kernels.mixed import TABLE, Option, allocate, fisher_diagonals
from tierlm.kernels.modules import QuantEmbedding, QuantLinear
from tierlm.kernels.recipe import RecipeError, parse_recipe

ROOT = Path(__file__).resolve().parents[2]
CALIB = ROOT / "data" / "text" / "python-docs" / "calib"

MIXED = """\
name: t-mixed
calibration: {{sequences: 6, seq_len: 32, batch_size: 4, max_samples: 64}}
mixed_precision:
  bits_per_weight: {bits}
  sequences: 3
  seq_len: 32
  candidates:
    - {{method: rtn, options: {{bits: 3, group_size: 32}}}}
    - {{method: gptq, options: {{bits: 4, group_size: 32}}}}
    - {{method: int8}}
  table_candidates:
    - {{method: rtn, options: {{bits: 3, group_size: 32}}}}
    - {{method: rtn, options: {{bits: 4, group_size: 32}}}}
    - {{method: int8}}
"""


def test_fisher_diagonals_equal_transformers_squared_gradients(model_dir: Path) -> None:
    from transformers import AutoModelForCausalLM

    from tierlm.edge.decoder import load_model

    tokens = torch.randint(3, 300, (2, 12), generator=torch.Generator().manual_seed(0))
    ours = fisher_diagonals(load_model(model_dir), tokens, ["layers.0.mlp.down_proj", TABLE])
    hf = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    expected = {n: torch.zeros_like(t) for n, t in ours.items()}
    for row in tokens:
        hf.zero_grad()
        hf(row[None], labels=row[None]).loss.backward()
        expected["layers.0.mlp.down_proj"] += hf.model.layers[0].mlp.down_proj.weight.grad.pow(2) / 2
        expected[TABLE] += hf.model.embed_tokens.weight.grad.pow(2) / 2  # lookups and the tied output layer
    for name in ours:
        torch.testing.assert_close(ours[name], expected[name], rtol=1e-3, atol=1e-12)


def _options(*pairs: tuple[int, float]) -> list[Option]:
    return [Option(i, b, loss) for i, (b, loss) in enumerate(pairs)]


def test_allocation_fits_the_budget_and_beats_every_uniform_choice() -> None:
    prices = {
        "a": _options((30, 9.0), (40, 2.0), (80, 1.9)),  # sensitive: the second option is cheap relief
        "b": _options((30, 1.0), (40, 0.9), (80, 0.1)),
        "c": _options((30, 4.0), (40, 3.0), (80, 0.2)),
    }
    for budget in (90, 120, 160, 200, 240):
        chosen = allocate(prices, budget)
        spent = sum(o.nbytes for o in chosen.values())
        assert spent <= budget
        loss = sum(o.loss for o in chosen.values())
        best = min(
            sum(o.loss for o in combo)
            for combo in itertools.product(*prices.values())
            if sum(o.nbytes for o in combo) <= budget
        )
        assert loss <= best + 1.0  # greedy on the convex hulls: within one step of the optimum
        for i in range(3):
            uniform = [options[i] for options in prices.values()]
            if sum(o.nbytes for o in uniform) <= budget:
                assert loss <= sum(o.loss for o in uniform)
    assert allocate(prices, 90)["a"].nbytes == 30 and allocate(prices, 100)["a"].nbytes == 40
    with pytest.raises(ValueError, match="over the budget"):
        allocate(prices, 80)


def test_mixed_recipe_validates() -> None:
    recipe = parse_recipe(MIXED.format(bits=5.0))
    assert recipe.calibration_needs() == {"hessian"}  # gptq may be chosen
    with pytest.raises(RecipeError, match="leave rules"):
        parse_recipe(MIXED.format(bits=5.0) + "embedding: {method: int8}\n")
    with pytest.raises(RecipeError, match="composites"):
        parse_recipe(MIXED.format(bits=5.0).replace("{method: int8}", "{method: composite, options: {lowrank: {method: svd, rank: 2}}}", 1))


def test_a_planned_artifact_spends_its_budget_and_reloads_identically(gemma_dir: Path, tmp_path: Path) -> None:
    from tierlm.edge.compress import compress
    from tierlm.edge.decoder import CausalLM, load_model

    calib = "\n".join(p.read_text() for p in sorted(CALIB.glob("*.txt")))
    results = {}
    for bits in (4.5, 7.0):
        out = tmp_path / f"mixed-{bits}"
        results[bits] = compress(gemma_dir, parse_recipe(MIXED.format(bits=bits)), calib, out)
        manifest = json.loads((out / "tierlm_compression.json").read_text())
        plan = manifest["mixed_precision_plan"]
        assert manifest["bytes"]["total"] == plan["bytes"] <= plan["budget_bytes"]
        assert plan["bits_per_weight"] <= bits
        assert set(plan["modules"]) == {n for n in manifest["modules"] if n.startswith("layers.")} | {TABLE}
        for name, chosen in plan["modules"].items():
            assert manifest["modules"][name]["method"] == chosen["method"]
        model = load_model(out)
        assert all(isinstance(m, QuantLinear) for n, m in model.named_modules() if n.endswith("_proj"))
        assert isinstance(model.embed_tokens, QuantEmbedding)
        ids = torch.randint(3, 300, (2, 16), generator=torch.Generator().manual_seed(1))
        with torch.inference_mode():
            assert torch.equal(CausalLM(load_model(out))(ids), CausalLM(model)(ids))
    low, high = (json.loads((tmp_path / f"mixed-{b}" / "tierlm_compression.json").read_text())["mixed_precision_plan"] for b in (4.5, 7.0))
    assert low["estimated_loss_increase"] > high["estimated_loss_increase"]
    methods = {m["method"] + str(m["options"].get("bits")) for m in low["modules"].values()}
    assert len(methods) > 1  # a real mix, not one format everywhere
