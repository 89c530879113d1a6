"""The compression pipeline on tiny models: artifacts reload with identical logits and evaluate.

Uses the tiny random Llama and Gemma 3 folders of tests/conftest.py and real calibration text.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from torch import nn
from typer.testing import CliRunner

from tierlm.edge.decoder import CausalLM, load_model
from tierlm.kernels.artifact import MANIFEST, artifact_state, byte_breakdown, save_artifact
from tierlm.kernels.modules import QuantEmbedding, QuantLinear
from tierlm.edge.compress import calibration_tokens
from tierlm.kernels.pipeline import compress_model
from tierlm.kernels.recipe import parse_recipe

ROOT = Path(__file__).resolve().parents[2]
CALIB = ROOT / "data" / "text" / "python-docs" / "calib" / "library-json.txt"
EVAL = ROOT / "data" / "text" / "python-docs" / "eval" / "tutorial-appetite.txt"
runner = CliRunner()


def recipe_text(method: str, options: str, embedding: str = "{method: rtn, options: {bits: 4, group_size: 32}}", skip: str = "[]") -> str:
    return f"""\
name: t-{method}
calibration: {{sequences: 6, seq_len: 32, batch_size: 4, max_samples: 64}}
rules:
  - match: "layers.*"
    method: {method}
    options: {options}
skip: {skip}
embedding: {embedding}
"""


METHODS = {
    "gptq": "{bits: 4, group_size: 32}",
    "awq": "{bits: 4, group_size: 32, n_grid: 4}",
    "int8": "{smoothquant_alpha: 0.5}",
    "nf4": "{block_size: 32}",
}


def compressed(folder: Path, recipe_yaml: str) -> nn.Module:
    from transformers import AutoTokenizer

    recipe = parse_recipe(recipe_yaml)
    model = load_model(folder)
    tokens = calibration_tokens(AutoTokenizer.from_pretrained(str(folder)), CALIB.read_text(), 6, 32)
    compress_model(model, recipe, tokens)
    return model


def logits(model: nn.Module, ids: torch.Tensor) -> torch.Tensor:
    with torch.inference_mode():
        return CausalLM(model)(ids)


@pytest.mark.parametrize("method", sorted(METHODS))
def test_artifact_reloads_with_identical_logits(model_dir: Path, tmp_path: Path, method: str) -> None:
    model = compressed(model_dir, recipe_text(method, METHODS[method]))
    save_artifact(model, tmp_path / "a", model_dir)
    reloaded = load_model(tmp_path / "a")
    ids = torch.randint(0, model.config.vocab_size, (2, 24), generator=torch.Generator().manual_seed(0))
    expected = logits(model, ids)
    assert torch.equal(logits(reloaded, ids), expected)
    # ...and it is really compressed: every block linear and the table are quantized modules.
    for name, module in reloaded.named_modules():
        if name.startswith("layers.") and name.endswith("_proj"):
            assert isinstance(module, QuantLinear), name
    assert isinstance(reloaded.embed_tokens, QuantEmbedding)
    dense = logits(load_model(model_dir), ids)
    assert not torch.equal(expected, dense)
    # Perturbed, not broken (4-bit tiny random models drift a lot; real quality is in the bench).
    assert torch.isfinite(expected).all()
    assert (expected - dense).norm() < dense.norm()


def test_manifest_describes_every_module_and_counts_bytes(llama_dir: Path, tmp_path: Path) -> None:
    recipe = recipe_text("gptq", METHODS["gptq"], skip='["layers.0.self_attn.*"]')
    model = compressed(llama_dir, recipe)
    manifest = save_artifact(model, tmp_path / "a", llama_dir, extra={"recipe": {"name": "t"}})
    on_disk = json.loads((tmp_path / "a" / MANIFEST).read_text())
    assert on_disk == json.loads(json.dumps(manifest))
    modules = on_disk["modules"]
    up = modules["layers.1.mlp.up_proj"]
    assert (up["kind"], up["method"], up["bits"], up["group_size"]) == ("quantized_linear", "gptq", 4, 32)
    assert up["sparsity"] is None and up["rank"] is None and up["storage"]["format"]
    assert "layers.0.self_attn.q_proj" not in modules and "layers.0.mlp.up_proj" in modules
    assert isinstance(load_model(tmp_path / "a").layers[0].self_attn.q_proj, nn.Linear)
    assert modules["embed_tokens"]["method"] == "rtn"
    tensors, _, _ = artifact_state(load_model(llama_dir))
    dense = byte_breakdown(tensors)
    assert on_disk["bytes"]["total"] < dense["total"] / 3
    assert on_disk["bytes"]["embeddings"] < dense["embeddings"] / 4
    assert sum(m["bytes"] for m in modules.values()) < on_disk["bytes"]["total"]
    for name in ("config.json", "tokenizer.json", "model.safetensors"):
        assert (tmp_path / "a" / name).is_file()


def test_tied_model_rejects_a_separate_lm_head(gemma_dir: Path) -> None:
    text = "name: t\nrules: []\nlm_head: {method: rtn, options: {group_size: 32}}\n"
    with pytest.raises(ValueError, match="ties its output layer"):
        compressed(gemma_dir, text)


def test_eval_ppl_and_engine_accept_an_artifact(gemma_dir: Path, tmp_path: Path) -> None:
    import asyncio

    from tierlm.edge import perplexity
    from tierlm.app.commands import eval as eval_commands
    from tierlm.edge import DecoderEngine, GenerationRequest

    model = compressed(gemma_dir, recipe_text("rtn", "{bits: 4, group_size: 32}"))
    save_artifact(model, tmp_path / "a", gemma_dir)
    result = runner.invoke(
        eval_commands.app,
        ["ppl", "--model", str(tmp_path / "a"), "--text", str(EVAL), "--max-tokens", "80", "--context", "32", "--stride", "16", "--threads", "1", "--json"],
    )
    assert result.exit_code == 0, result.output
    record = json.loads(result.output.strip().splitlines()[-1])
    from transformers import AutoTokenizer

    expected = perplexity.evaluate(CausalLM(model), AutoTokenizer.from_pretrained(str(gemma_dir)), EVAL.read_text(), context=32, stride=16, max_tokens=80)
    assert record["ppl"] == pytest.approx(expected.ppl, rel=1e-9)
    assert record["tokens"] == 80

    engine = DecoderEngine.from_pretrained(tmp_path / "a", max_batch=1, max_seq_len=64, threads=1)
    try:
        completion = asyncio.run(engine.generate(GenerationRequest(prompt="The json module", max_tokens=5, ignore_eos=True)))
    finally:
        engine.close()
    assert completion.completion_tokens == 5


def test_cli_compress_writes_an_artifact(llama_dir: Path, tmp_path: Path) -> None:
    from tierlm.app.cli import app

    recipe = tmp_path / "r.yaml"
    recipe.write_text(recipe_text("rtn", "{bits: 4, group_size: 32}"))
    out = tmp_path / "a"
    result = runner.invoke(app, ["compress", "--model", str(llama_dir), "--recipe", str(recipe), "--calib", str(CALIB), "--out", str(out), "--threads", "1"])
    assert result.exit_code == 0, result.output
    assert "modules compressed by t-rtn" in result.output
    # Not a terminal: a line per step rather than a bar drawn only at the end.
    assert "t-rtn: layer 0: compressing" in result.stderr and "t-rtn: done" in result.stderr
    assert (out / MANIFEST).is_file() and isinstance(load_model(out).layers[0].mlp.up_proj, QuantLinear)


def test_cli_compress_reports_a_bad_recipe_with_its_line(llama_dir: Path, tmp_path: Path) -> None:
    from tierlm.app.cli import app

    recipe = tmp_path / "r.yaml"
    recipe.write_text("name: t\nrules:\n  - match: '*'\n    method: gptqq\n")
    result = runner.invoke(app, ["compress", "--model", str(llama_dir), "--recipe", str(recipe), "--calib", str(CALIB), "--out", str(tmp_path / "a")])
    assert result.exit_code == 3  # an invalid configuration file
    assert result.stderr.startswith(f"Error: {recipe}:3") and "gptqq" in result.stderr


def test_cli_help() -> None:
    from tierlm.app.cli import app

    result = runner.invoke(app, ["compress", "--help"])
    assert result.exit_code == 0 and "--recipe" in result.output and "--calib" in result.output


def test_linears_reading_one_input_share_statistics_equal_to_their_own(llama_dir: Path) -> None:
    from tierlm.kernels.calibration import CalibrationRecorder, StatsSpec
    from tierlm.kernels.pipeline import _run_layer, _SharedInputRecorder

    model = load_model(llama_dir)
    model.setup_cache(2, 16)
    hidden = [model.embed(torch.randint(0, model.config.vocab_size, (2, 16), generator=torch.Generator().manual_seed(1)))]
    linears = {n: m for n, m in model.layers[0].named_modules() if isinstance(m, nn.Linear)}
    spec = StatsSpec(hessian=True)
    with _SharedInputRecorder(linears, spec, 0) as shared:
        _run_layer(model, 0, hidden)
    with CalibrationRecorder(linears, spec) as separate:
        _run_layer(model, 0, hidden)
    assert shared.stats["self_attn.k_proj"] is shared.stats["self_attn.q_proj"]
    assert shared.stats["mlp.up_proj"] is shared.stats["mlp.gate_proj"]
    assert shared.stats["mlp.down_proj"] is not shared.stats["mlp.up_proj"]
    for name in linears:
        assert torch.equal(shared.stats[name].hessian(), separate.stats[name].hessian()), name
