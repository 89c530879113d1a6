#!/usr/bin/env bash
# One prepared GPU check for tierlm.kernels: the CUDA tests, then the matmul speed table against
# fp16 (bench/results/kernels_matmul_cuda.json, or $OUT/ when set). Run from the repository root
# on a machine with CUDA torch. An offline machine without pytest/hypothesis/rich can be given
# build/devsite (see the `pip install --target` line in the kernels report) on PYTHONPATH.
set -euo pipefail
if [ -d build/devsite ]; then export PYTHONPATH="$PWD/build/devsite${PYTHONPATH:+:$PYTHONPATH}"; fi
PY=${PYTHON:-python3}
$PY -c 'import torch; print("torch", torch.__version__, "cuda", torch.version.cuda, torch.cuda.get_device_name())'
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
$PY -m pytest -q -rs --import-mode=importlib -p no:cacheprovider tests/kernels/test_cuda.py
$PY bench/kernels_matmul.py --device cuda --budget-s 0.3 --out "${OUT:-bench/results}/kernels_matmul_cuda.json"
