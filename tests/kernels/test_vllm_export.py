"""`tierlm export vllm`: artifacts as compressed-tensors checkpoints, on the tiny Llama and Gemma 3.

The export must carry the artifact's packed tensors bit for bit, describe them in a
compressed-tensors config vLLM reads, load back into our runtime as the same model, and refuse
(before writing anything) what vLLM cannot run. vLLM itself runs the export in
tests/cloud/test_vllm_export_parity.py (slow).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from safetensors.torch import load_file
from typer.testing import CliRunner

from tierlm.app.cli import app
from tierlm.edge.decoder import CausalLM, load_model
from tierlm.kernels.artifact import save_artifact
from tierlm.kernels.modules import QuantLinear
from tierlm.edge.compress import calibration_tokens
from tierlm.kernels.pipeline import compress_model
from tierlm.kernels.quant.group import GroupQuantTensor
from tierlm.kernels.quant.int8 import Int8Tensor
from tierlm.kernels.recipe import parse_recipe
from tierlm.edge.compress import export_artifact_for_vllm
from tierlm.kernels.vllm_export import ExportError, is_exported

ROOT = Path(__file__).resolve().parents[2]
CALIB = ROOT / "data" / "text" / "python-docs" / "calib" / "library-json.txt"
runner = CliRunner()

EXPORTABLE = {
    "rtn": "{bits: 4, group_size: 32}",
    "gptq": "{bits: 4, group_size: 32}",
    "int8": "{}",  # plain W8A8: no SmoothQuant, no outliers
}
REFUSED = {
    "awq": ("{bits: 4, group_size: 32, n_grid: 4}", "AWQ"),
    "int8": ("{smoothquant_alpha: 0.5}", "SmoothQuant"),
    "nf4": ("{block_size: 32}", "nf4"),
}


def artifact(model_dir: Path, out: Path, method: str, options: str) -> Path:
    from transformers import AutoTokenizer

    recipe = parse_recipe(
        f"name: t-{method}\ncalibration: {{sequences: 4, seq_len: 32, batch_size: 4, max_samples: 64}}\n"
        f"rules:\n  - match: 'layers.*'\n    method: {method}\n    options: {options}\n"
        f"embedding: {{method: {'int8' if method == 'int8' else 'rtn'}, options: {EXPORTABLE['int8' if method == 'int8' else 'rtn']}}}\n"
    )
    model = load_model(model_dir)
    compress_model(model, recipe, calibration_tokens(AutoTokenizer.from_pretrained(str(model_dir)), CALIB.read_text(), 4, 32))
    save_artifact(model, out, model_dir)
    return out


def reference(model: torch.nn.Module) -> torch.nn.Module:
    """Every quantized linear on the reference path (dequantize, float product)."""
    for module in model.modules():
        if isinstance(module, QuantLinear):
            module.backend = "reference"
    return model


def float_output_layer(model: torch.nn.Module) -> torch.nn.Module:
    """The export's one documented change: the tied output layer over the dequantized table, in float.

    (For int4 that is the same product as the artifact's; for W8A8 it drops the output layer's
    activation quantization, since vLLM's table is a float embedding.)
    """
    table = model.embed_tokens.qweight.dequantize().to(torch.float32)
    model.lm_head = torch.nn.Linear(table.shape[1], table.shape[0], bias=False)
    model.lm_head.weight = torch.nn.Parameter(table, requires_grad=False)
    return model


def logits(model: torch.nn.Module, ids: torch.Tensor) -> torch.Tensor:
    with torch.inference_mode():
        return CausalLM(model)(ids)


@pytest.mark.parametrize("method", sorted(EXPORTABLE))
def test_export_carries_the_packed_tensors_and_is_the_same_model(model_dir: Path, tmp_path: Path, method: str) -> None:
    source = artifact(model_dir, tmp_path / "artifact", method, EXPORTABLE[method])
    summary = export_artifact_for_vllm(source, tmp_path / "vllm")
    assert is_exported(tmp_path / "vllm")

    config = json.loads((tmp_path / "vllm" / "config.json").read_text())
    q = config["quantization_config"]
    assert q["quant_method"] == "compressed-tensors" and q["ignore"] == ["lm_head"]
    (group,) = q["config_groups"].values()
    linears = [n for n, m in load_model(source).named_modules() if isinstance(m, QuantLinear) and n != "lm_head"]
    assert sorted(group["targets"]) == sorted(f"model.{n}" for n in linears)
    assert summary.schemes == {group["format"]: len(linears)} and summary.dequantized == ["embed_tokens"]

    ours = load_file(str(source / "model.safetensors"))
    exported = load_file(str(tmp_path / "vllm" / "model.safetensors"))
    for name in linears:
        hf = f"model.{name}"
        if method == "int8":
            assert group["format"] == "int-quantized" and group["input_activations"]["strategy"] == "token"
            assert torch.equal(exported[f"{hf}.weight"], ours[f"{name}.qweight"])
            assert torch.equal(exported[f"{hf}.weight_scale"].reshape(-1), ours[f"{name}.scale"])
        else:
            assert group["format"] == "pack-quantized" and group["weights"]["group_size"] == 32
            assert torch.equal(exported[f"{hf}.weight_packed"], ours[f"{name}.qweight"].t())
            assert torch.equal(exported[f"{hf}.weight_zero_point"], ours[f"{name}.qzeros"].t())
            assert torch.equal(exported[f"{hf}.weight_scale"], ours[f"{name}.scales"].t())
    assert exported["model.embed_tokens.weight"].dtype == torch.float32

    # Our runtime on the export: quantized modules over the same codes, the same logits.
    reloaded = load_model(tmp_path / "vllm")
    for name in linears:
        kind = Int8Tensor if method == "int8" else GroupQuantTensor
        assert isinstance(reloaded.get_submodule(name).qweight, kind), name
    ids = torch.randint(0, reloaded.config.vocab_size, (2, 20), generator=torch.Generator().manual_seed(0))
    want = logits(float_output_layer(reference(load_model(source))), ids)
    torch.testing.assert_close(logits(reference(load_model(tmp_path / "vllm")), ids), want, rtol=1e-4, atol=1e-4)
    # ...and on the fast kernels: int8 runs the artifact's own kernel; int4 keeps activations in
    # float (W4A16, onnxruntime accuracy level 0), so it agrees with the float reference.
    fast_want = logits(float_output_layer(load_model(source)), ids) if method == "int8" else want
    torch.testing.assert_close(logits(reloaded, ids), fast_want, rtol=1e-4, atol=1e-3)


@pytest.mark.parametrize("method", sorted(REFUSED))
def test_export_refuses_what_vllm_cannot_run_and_writes_nothing(llama_dir: Path, tmp_path: Path, method: str) -> None:
    options, reason = REFUSED[method]
    source = artifact(llama_dir, tmp_path / "artifact", method, options)
    with pytest.raises(ExportError, match=reason):
        export_artifact_for_vllm(source, tmp_path / "vllm")
    assert not (tmp_path / "vllm").exists()


def test_cli_exports_and_reports_refusals(llama_dir: Path, tmp_path: Path) -> None:
    good = artifact(llama_dir, tmp_path / "rtn", "rtn", EXPORTABLE["rtn"])
    result = runner.invoke(app, ["export", "vllm", "--artifact", str(good), "--out", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    assert "pack-quantized" in result.output and is_exported(tmp_path / "out")

    bad = artifact(llama_dir, tmp_path / "nf4", "nf4", REFUSED["nf4"][0])
    result = runner.invoke(app, ["export", "vllm", "--artifact", str(bad), "--out", str(tmp_path / "out2")])
    assert result.exit_code == 1 and not (tmp_path / "out2").exists()
    assert result.stderr.startswith("Error: cannot export for vLLM: ") and "nf4" in result.stderr.lower()

    # One line, however narrow the terminal or long the path.
    result = runner.invoke(app, ["export", "vllm", "--artifact", str(llama_dir), "--out", str(tmp_path / "out3")], terminal_width=40)
    assert result.exit_code == 4  # no artifact there
    assert result.stderr.splitlines() == [f"Error: {llama_dir}: not a tierlm artifact (no tierlm_compression.json); `tierlm compress` writes one"]


def test_the_vllm_engine_points_at_the_export_not_the_artifact(llama_dir: Path, tmp_path: Path) -> None:
    from tierlm.cloud.engines.vllm_engine import VLLMTextEngine

    source = artifact(llama_dir, tmp_path / "rtn", "rtn", EXPORTABLE["rtn"])
    with pytest.raises(ValueError, match="tierlm export vllm"):
        VLLMTextEngine(source)  # refused before vLLM is imported or started
