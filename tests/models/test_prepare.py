"""`tierlm.edge.catalog.prepare`: GGUF -> cached HF folder, on a tiny GGUF built in the test."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from tests.support.models import prepared_model
from tierlm.edge import catalog


@pytest.fixture
def tiny_spec(tiny_gguf: Path, monkeypatch: pytest.MonkeyPatch) -> catalog.ModelSpec:
    spec = catalog.ModelSpec(
        name="tiny-llama",
        description="test model",
        family="llama",
        quantization="F32",
        install="(built by the test)",
        module="gguf",
        gguf_name=tiny_gguf.name,
        locate=lambda spec, cache_dir: tiny_gguf,
    )
    monkeypatch.setitem(catalog.MODELS, spec.name, spec)
    return spec


def test_prepare_writes_a_loadable_hf_folder(tiny_spec: catalog.ModelSpec, tiny_gguf: Path, tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = catalog.prepare(tiny_spec.name, tmp_path)

    assert folder == tmp_path / "models" / "tiny-llama"
    names = {p.name for p in folder.iterdir()}
    assert {"config.json", "model.safetensors", "generation_config.json", catalog.MARKER} <= names
    assert "tokenizer.json" in names or "tokenizer.model" in names
    assert not any(".partial-" in p.name for p in tmp_path.joinpath("models").iterdir())

    config = json.loads((folder / "config.json").read_text())
    assert config["architectures"] == ["LlamaForCausalLM"]
    assert "quantization_config" not in config
    assert config["tie_word_embeddings"] is True
    with safe_open(str(folder / "model.safetensors"), "pt") as tensors:
        keys = set(tensors.keys())
        assert tensors.metadata() == {"format": "pt"}
    assert "lm_head.weight" not in keys and "model.embed_tokens.weight" in keys

    reference, tokenizer = catalog.load_gguf(tiny_gguf)
    reloaded = AutoModelForCausalLM.from_pretrained(folder)
    assert reloaded.lm_head.weight.data_ptr() == reloaded.model.embed_tokens.weight.data_ptr()
    ids = AutoTokenizer.from_pretrained(folder)("the cat in a hat", return_tensors="pt").input_ids
    assert torch.equal(ids, tokenizer("the cat in a hat", return_tensors="pt").input_ids)
    with torch.inference_mode():
        torch.testing.assert_close(reloaded(ids).logits, reference(ids).logits, rtol=0, atol=1e-5)


def test_prepare_is_idempotent_and_redoes_interrupted_runs(
    tiny_spec: catalog.ModelSpec, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = catalog.prepare(tiny_spec.name, tmp_path, verify=False)
    calls: list[Path] = []
    real_load = catalog.load_gguf
    monkeypatch.setattr(catalog, "load_gguf", lambda path, report: calls.append(path) or real_load(path, report))

    assert catalog.prepare(tiny_spec.name, tmp_path, verify=False) == folder
    assert calls == []  # already prepared: nothing converted

    (folder / catalog.MARKER).unlink()  # as if the run died before its last write
    assert not catalog.is_prepared(folder)
    assert catalog.prepare(tiny_spec.name, tmp_path, verify=False) == folder
    assert len(calls) == 1 and catalog.is_prepared(folder)


def test_verify_folder_catches_a_wrong_weight(tiny_gguf: Path, tiny_folder: Path, tmp_path: Path) -> None:
    from safetensors.torch import load_file, save_file

    reference, tokenizer = catalog.load_gguf(tiny_gguf)
    assert catalog.verify_folder(tiny_folder, reference, tokenizer) <= 1e-5

    broken = tmp_path / "broken"
    broken.mkdir()
    for path in tiny_folder.iterdir():
        (broken / path.name).write_bytes(path.read_bytes())
    state = load_file(str(broken / "model.safetensors"))
    state["model.norm.weight"] = state["model.norm.weight"] * 2
    save_file(state, str(broken / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(ValueError, match="logits differ"):
        catalog.verify_folder(broken, reference, tokenizer)


def test_cache_root_precedence(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TIERLM_CACHE", str(tmp_path / "env"))
    assert catalog.cache_root() == tmp_path / "env"
    assert catalog.cache_root(tmp_path / "arg") == tmp_path / "arg"
    monkeypatch.delenv("TIERLM_CACHE")
    assert catalog.cache_root() == Path.home() / ".cache" / "tierlm"


def test_unknown_and_missing_models(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(catalog.UnknownModel, match="gemma-3-270m"):
        catalog.prepare("no-such-model", tmp_path)
    spec = catalog.ModelSpec(
        name="absent",
        description="",
        family="llama",
        quantization="",
        install="pip install absent",
        module="tierlm_absent_package",
        gguf_name="absent.gguf",
        locate=catalog.MODELS["smollm2-135m"].locate,
    )
    monkeypatch.setitem(catalog.MODELS, spec.name, spec)
    assert not spec.is_installed()
    with pytest.raises(catalog.ModelNotInstalled, match="pip install absent"):
        catalog.prepare("absent", tmp_path)


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(catalog.MODELS))
def test_real_models_prepare_and_reload(name: str) -> None:
    """The real packages: minutes on the first run, seconds once the default cache is warm."""
    folder = prepared_model(name)
    model, tokenizer = catalog.load_folder(folder)
    config = model.config
    if name == "gemma-3-270m":
        assert (config.hidden_size, config.num_hidden_layers, config.num_attention_heads) == (640, 18, 4)
        assert (config.num_key_value_heads, config.head_dim, config.intermediate_size) == (1, 256, 2048)
        assert (config.vocab_size, config.sliding_window, config.max_position_embeddings) == (262144, 512, 32768)
        assert config.layer_types.count("full_attention") == 3
    ids = tokenizer("The capital of France is", return_tensors="pt").input_ids
    with torch.inference_mode():
        out = model.generate(ids, max_new_tokens=3, do_sample=False)
    assert out.shape[1] == ids.shape[1] + 3
