"""oneDNN must not dispatch tierlm's int8 GEMMs to AMX (not permitted on our CPUs)."""

import subprocess
import sys

PROBE = """
import os
import tierlm.kernels
import torch
print("cap", os.environ["ONEDNN_MAX_CPU_ISA"])
a = torch.ones(2, 64, dtype=torch.int8)
torch._int_mm(a, a.t())
"""


def test_importing_kernels_caps_onednn_below_amx():
    env = {"ONEDNN_VERBOSE": "1", "PATH": "/usr/bin:/bin"}
    out = subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "cap AVX512_CORE_VNNI" in out.stdout.splitlines()
    # Where oneDNN runs the GEMM it names the ISA it dispatched to (on CPUs without AVX-512,
    # torch may not use oneDNN for it at all, and there is nothing more to see).
    isa = [line for line in out.stdout.splitlines() if ",info,cpu,isa:" in line]
    assert not isa or "AMX" not in isa[0], isa[0]
