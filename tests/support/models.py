"""The real models and compressed artifacts tests run on, prepared into the tierlm cache.

Both are built the first time a test asks (minutes on an empty cache) and reused by later
runs, so a fresh clone with an empty home folder runs the same tests as a warm machine.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from tierlm.edge import catalog

ROOT = Path(__file__).resolve().parents[2]
RECIPES = ROOT / "examples" / "recipes"
CALIB = ROOT / "data" / "text" / "python-docs" / "calib"


def prepared_model(name: str) -> Path:
    """`tierlm model prepare NAME`: its cached HF folder (skips, naming the install command, without its package)."""
    spec = catalog.get_spec(name)
    if not spec.is_installed():
        pytest.skip(f"model package not installed: {spec.install}")
    return catalog.prepare(name)


def cached_artifact(model: str, recipe_name: str) -> Path:
    """`tierlm compress` of registered `model` by examples/recipes/<recipe_name>.yaml, at
    <cache>/artifacts/<model>/<recipe_name>; rebuilt only when the recipe has changed."""
    from tierlm.edge.compress import artifact_matches, build_artifact
    from tierlm.edge.perplexity import read_text
    from tierlm.kernels.recipe import load_recipe

    recipe = load_recipe(RECIPES / f"{recipe_name}.yaml")
    out = catalog.cache_root() / "artifacts" / model / recipe_name
    if not artifact_matches(out, recipe):
        started = time.perf_counter()
        build_artifact(prepared_model(model), recipe, read_text(CALIB), out)
        print(f"built {out} in {time.perf_counter() - started:.0f} s")
    return out
