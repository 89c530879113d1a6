"""A decoder layer's work after attention as one onnxruntime run (tierlm.edge.fused_layers):
where every product of it runs whole in onnxruntime, the fused model computes the plain one's
logits, for Llama's pre-norm and Gemma 3's sandwich norms alike; elsewhere nothing is fused."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tierlm.edge.decoder import load_model
from tierlm.kernels.artifact import save_artifact
from tierlm.kernels.modules import QuantLinear
from tierlm.kernels.ops.ort_nbits import ort_available
from tests.kernels.test_pipeline import compressed, recipe_text

pytestmark = pytest.mark.skipif(not ort_available(), reason="needs onnxruntime")

FUSIBLE = {
    "int8": recipe_text("int8", "{}", embedding="{method: int8}"),
    "gptq-int4": recipe_text("gptq", "{bits: 4, group_size: 32}"),
}


def _float_activations(model: torch.nn.Module) -> torch.nn.Module:
    """The model's int4 kernels rebuilt at accuracy level 0 (float activations): served at
    level 4, a norm's float rounding in onnxruntime rather than torch can move an activation
    onto the neighbouring int8 level, which a random tiny model amplifies; at level 0 both
    paths compute the same products, so any other difference is a wiring error. (W8A8 kernels
    always quantize activations per token; on this tiny model the fused and plain paths agree
    within the tolerance below as served, so its case is compared as it is served.)"""
    for module in model.modules():
        if isinstance(module, QuantLinear):
            module.int4_accuracy_level = 0
            module.backend = module.backend  # rebuilds the kernel
    return model


def _artifact(model_dir: Path, tmp_path: Path, recipe: str) -> Path:
    path = tmp_path / "artifact"
    save_artifact(compressed(model_dir, recipe), path, model_dir)
    return path


@pytest.mark.parametrize("recipe", sorted(FUSIBLE))
@torch.inference_mode()
def test_fused_layers_compute_the_plain_models_logits(model_dir: Path, tmp_path: Path, recipe: str) -> None:
    path = _artifact(model_dir, tmp_path, FUSIBLE[recipe])
    plain, fused = _float_activations(load_model(path)), _float_activations(load_model(path))
    fused.fuse_projections()
    assert all(layer.tail is not None for layer in fused.layers)
    # Each tail also makes the next layer's q/k/v: one run per layer.
    assert [layer.tail.next_sizes is not None for layer in fused.layers] == [True] * (len(fused.layers) - 1) + [False]
    assert all(layer.self_attn.qkv.linear.home_kernel is None for layer in fused.layers[1:])
    assert all(layer.mlp.down_proj.home_kernel is None for layer in fused.layers)  # the graph holds its weights
    vocab = plain.config.vocab_size
    ids = torch.randint(0, vocab, (2, 12), generator=torch.Generator().manual_seed(0))
    for model in (plain, fused):
        model.setup_cache(max_batch=2, max_seq_len=32, max_chunk=9)
    slots = torch.tensor([0, 1])
    # A 9-token prefill of two rows, then single-token decode steps.
    steps = [(ids[:, :9], torch.arange(9).expand(2, 9))]
    steps += [(ids[:, p : p + 1], torch.full((2, 1), p)) for p in range(9, 12)]
    for tokens, positions in steps:
        want = plain(tokens, positions, slots)
        got = fused(tokens, positions, slots)
        torch.testing.assert_close(got, want, atol=1e-4 * want.abs().max().item(), rtol=0)


@torch.inference_mode()
def test_layers_with_torch_side_work_or_dense_linears_stay_unfused(model_dir: Path, tmp_path: Path) -> None:
    # SmoothQuant divides each product's input by its scales in torch before the session.
    smoothed = load_model(_artifact(model_dir, tmp_path, recipe_text("int8", "{smoothquant_alpha: 0.5}")))
    dense = load_model(model_dir)
    for model in (smoothed, dense):
        model.fuse_projections()
        assert all(layer.tail is None for layer in model.layers)
