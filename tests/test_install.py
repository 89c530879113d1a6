"""`pip install tierlm` (the SDK) into an empty venv: no torch, and the SDK, `tierlm ask` and the
shipped workloads work from the installed wheel, outside the source tree."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.policies import two_tier_policy, write
from tests.support.router_process import RouterProcess, scripted_tiers

REPO = Path(__file__).resolve().parents[1]
# What the SDK may pull: gRPC, protobuf, typer (with click, rich and their small helpers), pydantic,
# PyYAML, prometheus-client. None of the heavy stacks.
HEAVY = {"torch", "numpy", "transformers", "onnxruntime", "scipy", "scikit-learn", "ray", "fastapi", "matplotlib"}


@pytest.fixture(scope="module")
def sdk_venv(tmp_path_factory) -> Path:
    work = tmp_path_factory.mktemp("sdk-install")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", str(REPO), "-w", str(work)],
                   check=True, capture_output=True)
    (wheel,) = work.glob("tierlm-*.whl")
    subprocess.run([sys.executable, "-m", "venv", str(work / "venv")], check=True)
    python = work / "venv" / "bin" / "python"
    subprocess.run([str(python), "-m", "pip", "install", "-q", str(wheel)], check=True, capture_output=True)
    return python


@pytest.mark.slow
def test_sdk_install_pulls_no_torch(sdk_venv):
    listing = subprocess.run([str(sdk_venv), "-m", "pip", "list", "--format", "json"], check=True, capture_output=True, text=True)
    names = {p["name"].lower() for p in json.loads(listing.stdout)}
    assert "tierlm" in names and "grpcio" in names
    assert not names & HEAVY, sorted(names & HEAVY)
    assert len(names) < 30, sorted(names)


@pytest.mark.slow
def test_the_installed_sdk_asks_a_router_and_finds_its_data(sdk_venv, tmp_path):
    outside = {"cwd": tmp_path, "capture_output": True, "text": True, "timeout": 120}
    found = subprocess.run([str(sdk_venv), "-c", "import tierlm, tierlm.data, pathlib; "
                            "print(tierlm.data.workloads_dir()); "
                            "print((pathlib.Path(tierlm.__file__).parent / 'py.typed').exists())"], **outside)
    workloads, typed = found.stdout.split()
    assert Path(workloads, "headlines", "train.jsonl").is_file() and "site-packages" in workloads and typed == "True"
    tierlm = [str(sdk_venv), "-m", "tierlm.app.cli"]
    assert subprocess.run([*tierlm, "--help"], **outside).returncode == 0
    with scripted_tiers("edge", "cloud") as ports:
        policy = write(tmp_path / "policy.yaml", two_tier_policy(ports["edge"], ports["cloud"], {"acme": "acme-key"}))
        with RouterProcess(policy, tmp_path / "ledger.sqlite") as router:
            asked = subprocess.run([*tierlm, "ask", "an easy one", "--router", router.address, "--api-key", "acme-key"], **outside)
            assert asked.returncode == 0 and asked.stdout.strip() == "edge: an easy one", asked.stderr
            health = subprocess.run([*tierlm, "health", "--address", router.address], **outside)
            assert health.returncode == 0 and "SERVING" in health.stdout
