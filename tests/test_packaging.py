"""One namespace: the root folders are tierlm subpackages and never top-level modules."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SETUPTOOLS = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]


def test_every_package_folder_is_listed_for_the_wheel():
    on_disk = set()
    for package, folder in SETUPTOOLS["package-dir"].items():
        for init in (REPO / folder).rglob("__init__.py"):
            relative = init.parent.relative_to(REPO / folder)
            on_disk.add(".".join([package, *relative.parts]))
    assert on_disk == set(SETUPTOOLS["packages"])


def test_namespace_imports():
    subprocess.run(
        [sys.executable, "-c", "import tierlm.kernels, tierlm.edge, tierlm.cloud, tierlm.router, tierlm.v1"],
        check=True, cwd="/",
    )


@pytest.mark.parametrize("name", ["kernels", "edge", "cloud", "router"])
def test_root_folders_are_not_installed_as_top_level_modules(name, tmp_path):
    # Outside the source tree, only the tierlm namespace exists. (Inside it, Python puts the
    # working directory on sys.path, so the folders are visible to `python -c` there; they
    # stay harmless: transformers' probe for a `kernels` package finds no version and skips it.)
    result = subprocess.run([sys.executable, "-c", f"import {name}"], cwd=tmp_path, capture_output=True, text=True)
    assert result.returncode != 0
    assert f"No module named '{name}'" in result.stderr
