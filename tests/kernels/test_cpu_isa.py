"""oneDNN must not dispatch tierlm's int8 GEMMs to AMX (not permitted on our CPUs)."""

import subprocess
import sys

import pytest

PROBE = """
import tierlm.kernels
import torch
a = torch.ones(2, 64, dtype=torch.int8)
torch._int_mm(a, a.t())
"""


def test_importing_kernels_caps_onednn_below_amx():
    env = {"ONEDNN_VERBOSE": "1", "PATH": "/usr/bin:/bin"}
    out = subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    isa = [line for line in out.stdout.splitlines() if ",info,cpu,isa:" in line]
    if not isa:
        pytest.skip("this torch build's oneDNN printed no ISA line")
    assert "AMX" not in isa[0], isa[0]
