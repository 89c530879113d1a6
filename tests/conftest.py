"""Shared fixtures: tiny random Llama and Gemma 3 models saved as HF folders (edge, cloud, router tests)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tierlm.edge.tiny import build_model


@pytest.fixture(scope="session")
def llama_dir(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("tiny-llama")
    build_model(path, "llama")
    return path


@pytest.fixture(scope="session")
def gemma_dir(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("tiny-gemma3")
    build_model(path, "gemma3")
    return path


@pytest.fixture(scope="session", params=["llama", "gemma3"])
def model_dir(request, llama_dir, gemma_dir) -> Path:
    return llama_dir if request.param == "llama" else gemma_dir


@pytest.fixture(scope="session", autouse=True)
def _one_torch_thread():
    # Two shared cores: oversubscribed torch threads make everything many times slower.
    import torch

    torch.set_num_threads(1)
