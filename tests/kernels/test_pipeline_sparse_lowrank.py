"""Pruning, low-rank and composite recipes through the pipeline, the artifact and its loaders.

Each shipped recipe of those kinds (examples/recipes) compresses the tiny random Llama of
tests/conftest.py with a small calibration set; the artifact must reload with logits identical
to the in-memory compressed model, hold the pattern, sparsity and ranks it claims, and meet
its rank budget.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from torch import nn

from tierlm.edge.decoder import CausalLM, load_model
from tierlm.kernels.artifact import read_manifest, save_artifact
from tierlm.kernels.composite import CompositeTensor
from tierlm.kernels.lowrank.tensor import LowRankTensor
from tierlm.kernels.modules import QuantLinear
from tierlm.edge.compress import calibration_tokens
from tierlm.kernels.pipeline import compress_model
from tierlm.kernels.recipe import Calibration, Recipe, RecipeError, parse_recipe
from tierlm.kernels.sparse.tensors import SparseQuantTensor, SparseTensor

ROOT = Path(__file__).resolve().parents[2]
RECIPES = ROOT / "examples" / "recipes"
CALIB = ROOT / "data" / "text" / "python-docs" / "calib" / "library-json.txt"
KINDS = ["magnitude-50", "wanda-50", "sparsegpt-50", "magnitude-2of4", "sparsegpt-2of4", "svd-20", "asvd-20", "composite"]
SMALL = Calibration(sequences=6, seq_len=32, batch_size=4, max_samples=64)


def shipped(name: str) -> Recipe:
    """The shipped recipe, with a test-sized calibration and groups that fit 64-wide layers."""
    text = (RECIPES / f"{name}.yaml").read_text().replace("group_size: 128", "group_size: 32")
    return parse_recipe(text, name).model_copy(update={"calibration": SMALL})


def compressed(folder: Path, recipe: Recipe) -> nn.Module:
    from transformers import AutoTokenizer

    model = load_model(folder)
    tokens = calibration_tokens(AutoTokenizer.from_pretrained(str(folder)), CALIB.read_text(), SMALL.sequences, SMALL.seq_len)
    compress_model(model, recipe, tokens)
    return model


def logits(model: nn.Module, ids: torch.Tensor) -> torch.Tensor:
    with torch.inference_mode():
        return CausalLM(model)(ids)


def block_linears(model: nn.Module) -> dict[str, nn.Module]:
    return {n: m for n, m in model.named_modules() if n.startswith("layers.") and n.endswith("_proj")}


@pytest.mark.parametrize("name", KINDS)
def test_shipped_recipe_artifact_reloads_with_identical_logits(llama_dir: Path, tmp_path: Path, name: str) -> None:
    recipe = shipped(name)
    model = compressed(llama_dir, recipe)
    save_artifact(model, tmp_path / "a", llama_dir, extra={"recipe": recipe.model_dump(mode="json")})
    reloaded = load_model(tmp_path / "a")
    ids = torch.randint(0, model.config.vocab_size, (2, 24), generator=torch.Generator().manual_seed(0))
    expected = logits(model, ids)
    assert torch.equal(logits(reloaded, ids), expected)
    dense = logits(load_model(llama_dir), ids)
    assert torch.isfinite(expected).all() and not torch.equal(expected, dense)

    manifest = read_manifest(tmp_path / "a")
    stages = recipe.rules[0].options
    linears = block_linears(reloaded)
    assert linears and all(isinstance(m, QuantLinear) for m in linears.values())
    for module_name, module in linears.items():
        entry = manifest["modules"][module_name]
        assert entry["method"] == "composite"
        weight = module.qweight
        sparse = weight.base if isinstance(weight, CompositeTensor) else weight
        if "prune" in stages:
            assert isinstance(sparse, SparseQuantTensor if "quant" in stages else SparseTensor)
            mask = sparse.layout.decode()
            pattern = stages["prune"]["pattern"]
            assert entry["storage"]["pattern"] == pattern
            if pattern == "2:4":
                assert (mask.reshape(mask.shape[0], -1, 4).sum(-1) == 2).all()
            else:
                assert 1 - float(mask.float().mean()) == pytest.approx(stages["prune"]["sparsity"], abs=0.02)
        if "lowrank" in stages:
            realised = weight.rank if isinstance(weight, (CompositeTensor, LowRankTensor)) else 0
            assert entry["rank"] == realised


@pytest.mark.parametrize("name", ["svd-20", "asvd-20"])
def test_rank_budget_keeps_the_parameter_fraction(llama_dir: Path, name: str) -> None:
    recipe = shipped(name)
    budget = recipe.rules[0].rank_budget
    dense = {n: m.weight.numel() for n, m in block_linears(load_model(llama_dir)).items()}
    model = compressed(llama_dir, recipe)
    factors = {n: m.qweight for n, m in block_linears(model).items()}
    assert all(isinstance(t, LowRankTensor) and t.rank >= budget.min_rank for t in factors.values())
    kept = sum(t.left.numel() + t.right.numel() for t in factors.values())
    total = sum(dense.values())
    assert kept <= budget.keep_params * total
    # Greedy allocation fills the budget up to less than one rank step of the widest layer.
    widest = max(t.shape[0] + t.shape[1] for t in factors.values())
    assert kept > budget.keep_params * total - widest
    # Ranks differ across layers: the allocation follows the spectra, not a uniform cut.
    assert len({t.rank for t in factors.values()}) > 1


def test_asvd_has_lower_calibration_output_error_than_svd_at_the_same_ranks(llama_dir: Path) -> None:
    """Per layer, ASVD's whitened truncation beats plain SVD on the activations it calibrated on."""
    from tierlm.kernels.calibration import LayerStats, StatsSpec
    from tierlm.kernels.lowrank import FACTORIZERS

    model = load_model(llama_dir)
    x = torch.randn(512, model.config.hidden_size, generator=torch.Generator().manual_seed(0))
    x[:, :4] *= 20  # a few outlier channels, as real hidden states have
    stats = LayerStats(x.shape[1], StatsSpec(hessian=True))
    stats.update(x)
    weight = model.layers[0].mlp.up_proj.weight.detach()
    errors = {}
    for method in ("svd", "asvd"):
        approx = FACTORIZERS.build(method).decompose(weight, stats).truncate(16, "float32").dequantize()
        errors[method] = float((x @ (weight - approx).t()).norm())
    assert errors["asvd"] < errors["svd"]


def test_budget_rules_are_validated() -> None:
    base = "name: t\nrules:\n  - match: 'layers.*'\n    method: composite\n"
    with pytest.raises(RecipeError, match="fixed rank or a rank_budget"):
        parse_recipe(base + "    options: {lowrank: {method: svd}}\n")
    with pytest.raises(RecipeError, match="rank_budget needs"):
        parse_recipe(base + "    options: {prune: {method: magnitude}}\n    rank_budget: {keep_params: 0.5}\n")
    with pytest.raises(RecipeError, match="keep_params"):
        parse_recipe(base + "    options: {lowrank: {method: svd}}\n    rank_budget: {keep_params: 1.5}\n")
    ok = parse_recipe(base + "    options: {lowrank: {method: svd, rank: 4}}\n")
    assert ok.rules[0].rank_budget is None


def test_eval_ppl_in_a_fresh_process_loads_a_composite_artifact(llama_dir: Path, tmp_path: Path) -> None:
    """A process that imports nothing but the CLI must still know the sparse and low-rank formats."""
    import json
    import subprocess
    import sys

    from transformers import AutoTokenizer

    from tierlm.edge import perplexity

    model = compressed(llama_dir, shipped("composite"))
    save_artifact(model, tmp_path / "a", llama_dir)
    text = ROOT / "data" / "text" / "python-docs" / "eval" / "tutorial-appetite.txt"
    window = ["--max-tokens", "40", "--context", "16", "--stride", "8"]
    result = subprocess.run(
        [sys.executable, "-m", "tierlm.app.cli", "eval", "ppl", "--model", str(tmp_path / "a"), "--text", str(text), *window, "--threads", "1", "--json"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    record = json.loads(result.stdout.strip().splitlines()[-1])
    tokenizer = AutoTokenizer.from_pretrained(str(llama_dir))
    expected = perplexity.evaluate(CausalLM(model), tokenizer, text.read_text(), context=16, stride=8, max_tokens=40)
    assert record["ppl"] == pytest.approx(expected.ppl, rel=1e-9)
