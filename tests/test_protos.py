"""The committed stubs are what the .proto files generate today."""

from __future__ import annotations

import runpy
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_committed_stubs_are_current(tmp_path):
    generator = runpy.run_path(str(REPO / "protos" / "generate.py"))
    generator["generate"](tmp_path)
    fresh = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*") if p.is_file())
    assert fresh, "protoc generated nothing"
    stale = [str(rel) for rel in fresh if (REPO / rel).read_bytes() != (tmp_path / rel).read_bytes()]
    assert not stale, f"run `make protos`: these stubs differ from their .proto: {stale}"
    committed = {p.relative_to(REPO) for p in (REPO / "tierlm" / "v1").glob("*_pb2*")}
    assert committed == set(fresh), "stubs without a .proto (or the reverse): run `make protos`"
