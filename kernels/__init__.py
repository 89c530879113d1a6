"""Shared compression kernels: quantization, sparsity, low-rank, packed formats and fast matmuls."""

import os

# oneDNN (behind torch._int_mm) reads this once, at its first primitive. On CPUs that advertise
# AMX it otherwise dispatches int8 GEMMs to AMX tiles, which our target machines do not permit
# (llama.cpp dies with SIGILL there) and which measured ~5x slower than the VNNI kernels at
# batch 1 on this CPU. A cap, not a requirement: older CPUs still use what they have, and a user
# who wants AMX sets the variable before importing tierlm.kernels.
os.environ.setdefault("ONEDNN_MAX_CPU_ISA", "AVX512_CORE_VNNI")
