"""Regenerate the Python stubs of the tierlm.v1 contract (`make protos` runs this).

The stubs are committed so that installing tierlm needs no code generation;
tests/test_protos.py regenerates them into a temporary folder and fails when the
committed copies differ, so a .proto edit without `make protos` cannot land.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from grpc_tools import protoc

PROTO_ROOT = Path(__file__).resolve().parent
REPO_ROOT = PROTO_ROOT.parent


def proto_files() -> list[Path]:
    return sorted((PROTO_ROOT / "tierlm" / "v1").glob("*.proto"))


def generate(out_dir: Path) -> None:
    """Write <out_dir>/tierlm/v1/*_pb2.py, *_pb2.pyi and *_pb2_grpc.py."""
    out_dir.mkdir(parents=True, exist_ok=True)
    # grpc_tools bundles the well-known .protos; pass their folder so imports resolve.
    well_known = Path(protoc.__file__).resolve().parent / "_proto"
    args = [
        "grpc_tools.protoc",
        f"-I{PROTO_ROOT}",
        f"-I{well_known}",
        f"--python_out={out_dir}",
        f"--pyi_out={out_dir}",
        f"--grpc_python_out={out_dir}",
        *(str(p.relative_to(PROTO_ROOT)) for p in proto_files()),
    ]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed; see the messages above")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=REPO_ROOT, help="root of the generated package tree")
    generate(parser.parse_args().out)
    print(f"generated stubs for {len(proto_files())} protos under {parser.parse_args().out}", file=sys.stderr)


if __name__ == "__main__":
    main()
