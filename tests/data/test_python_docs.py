"""The committed held-out text: splits disjoint, licensed, small; the extractor keeps prose only."""

from __future__ import annotations

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2] / "data" / "text" / "python-docs"


def _extract_module():
    spec = importlib.util.spec_from_file_location("python_docs_extract", ROOT / "extract.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_splits_are_disjoint_documents_within_budget() -> None:
    evals = {p.name for p in (ROOT / "eval").glob("*.txt")}
    calibs = {p.name for p in (ROOT / "calib").glob("*.txt")}
    assert evals and calibs and not evals & calibs
    assert all(name.startswith("tutorial-") for name in evals)
    assert all(name.startswith("library-") for name in calibs)
    total = sum(p.stat().st_size for p in ROOT.rglob("*") if p.is_file())
    assert total < 600_000
    assert sum((ROOT / "eval" / n).stat().st_size for n in evals) > 90_000
    assert sum((ROOT / "calib" / n).stat().st_size for n in calibs) > 100_000


def test_licence_and_source_are_committed() -> None:
    licence = (ROOT / "LICENSE.txt").read_text()
    assert "PSF LICENSE AGREEMENT FOR PYTHON" in licence and "ZERO-CLAUSE BSD" in licence
    assert "python3.11-doc" in (ROOT / "SOURCE.md").read_text()


def test_page_text_keeps_prose_and_drops_code() -> None:
    html = """<html><div class="sphinxsidebar">menu</div><div class="body" role="main">
    <h1>Title<a class="headerlink" href="#t">¶</a></h1>
    <p>Some   <em>prose</em>
    here.</p><div class="highlight"><pre>&gt;&gt;&gt; code()</pre></div><ul><li>item</li></ul>
    </div><div class="footer">footer</div></html>"""
    extract = _extract_module()
    assert extract.page_text(html) == "Title\n\nSome prose here.\n\nitem\n"
    assert ">>> code()" in extract.page_text(html, keep_pre=True)
