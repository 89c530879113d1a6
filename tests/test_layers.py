"""Imports run one way, and no module imports itself through others.

The contracts live in pyproject.toml (``[tool.importlinter]``) and are checked by import-linter.
Our top-level folders are mapped into the namespace (``kernels/`` is ``tierlm.kernels``), which a
static import graph cannot follow, so the checks run on a copy of the source laid out as it is
installed. Each check also runs once on a copy with one import that breaks it, so a test that
cannot fail would show.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def installed_layout(into: Path) -> Path:
    """The package sources copied to ``into`` as an install lays them out; returns ``into``."""
    package_dirs = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-dir"]
    for package, folder in sorted(package_dirs.items()):  # "tierlm" before "tierlm.kernels"
        target = into.joinpath(*package.split("."))
        for source in (ROOT / folder).rglob("*.py"):
            relative = source.relative_to(ROOT / folder)
            if relative.parts[0] in {"__pycache__"} or (package == "tierlm" and relative.parts[0] in package_dirs.values()):
                continue
            destination = target / relative
            destination.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source, destination)
    shutil.copyfile(ROOT / "pyproject.toml", into / "pyproject.toml")
    return into


def lint(tree: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(tree)}
    script = "import sys; from importlinter.cli import lint_imports; sys.exit(lint_imports(config_filename='pyproject.toml', no_cache=True))"
    return subprocess.run([sys.executable, "-c", script], cwd=tree, env=env, capture_output=True, text=True, timeout=300)


# Run in a child process whose path puts the copied tree first: in this process `tierlm` is
# already imported from the checkout, and grimp would read that instead.
_CYCLES = """
import json, sys
import grimp

graph = grimp.build_graph("tierlm", cache_dir=None, exclude_type_checking_imports=True)
index, low, stack, on_stack, groups = {}, {}, [], set(), []
sys.setrecursionlimit(10_000)

def visit(module):  # Tarjan's strongly connected components
    index[module] = low[module] = len(index)
    stack.append(module)
    on_stack.add(module)
    for imported in graph.find_modules_directly_imported_by(module):
        if imported not in index:
            visit(imported)
            low[module] = min(low[module], low[imported])
        elif imported in on_stack:
            low[module] = min(low[module], index[imported])
    if low[module] == index[module]:
        group = []
        while True:
            member = stack.pop()
            on_stack.discard(member)
            group.append(member)
            if member == module:
                break
        if len(group) > 1:
            groups.append(sorted(group))

for module in sorted(graph.modules):
    if module not in index:
        visit(module)
print(json.dumps({"modules": len(graph.modules), "kernels": "tierlm.kernels.quant.base" in graph.modules, "cycles": groups}))
"""


def module_cycles(tree: Path) -> list[set[str]]:
    """Strongly connected groups of more than one module in the import graph of ``tree``."""
    env = {**os.environ, "PYTHONPATH": str(tree)}
    result = subprocess.run([sys.executable, "-c", _CYCLES], cwd=tree, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["kernels"] and report["modules"] > 100, report  # the copied tree, not the checkout
    return [set(group) for group in report["cycles"]]


def inject(tree: Path, module: str, line: str) -> None:
    path = tree.joinpath(*module.split(".")).with_suffix(".py")
    path.write_text(path.read_text() + f"\n{line}\n")


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return installed_layout(tmp_path_factory.mktemp("layout"))


def test_every_layer_imports_only_downward(tree: Path) -> None:
    result = lint(tree)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


def test_an_upward_import_breaks_the_contract(tmp_path: Path) -> None:
    tree = installed_layout(tmp_path)
    inject(tree, "tierlm.kernels.modules", "import tierlm.app.cli  # upward: kernels -> application")
    result = lint(tree)
    assert result.returncode != 0
    assert "tierlm.kernels.modules -> tierlm.app.cli" in result.stdout


def test_no_module_imports_itself_through_others(tree: Path) -> None:
    assert module_cycles(tree) == []


def test_a_cycle_is_found(tmp_path: Path) -> None:
    tree = installed_layout(tmp_path)
    inject(tree, "tierlm.kernels.quant.base", "def _later():\n    import tierlm.kernels.quant.group  # noqa")
    cycles = module_cycles(tree)
    assert any({"tierlm.kernels.quant.base", "tierlm.kernels.quant.group"} <= group for group in cycles), cycles
