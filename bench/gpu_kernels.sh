#!/usr/bin/env bash
# One prepared GPU check for tierlm.kernels: the CUDA tests, then the matmul speed table against
# fp16 (bench/results/kernels_matmul_cuda.json, or $OUT/ when set). Run from the repository root
# on a machine with CUDA torch. An offline machine without pytest/hypothesis/rich gets them from
# build/devsite, made here with:
#   .venv/bin/pip install --target build/devsite --no-deps . pytest iniconfig pluggy packaging \
#       pygments hypothesis sortedcontainers rich markdown-it-py mdurl
# and there, first `pip install --no-deps --no-build-isolation -e .` (the package-dir mapping
# needs the editable finder when tests run from the repository root).
set -euo pipefail
if [ -d build/devsite ]; then export PYTHONPATH="$PWD/build/devsite${PYTHONPATH:+:$PYTHONPATH}"; fi
PY=${PYTHON:-python3}
$PY -c 'import torch; print("torch", torch.__version__, "cuda", torch.version.cuda, torch.cuda.get_device_name())'
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
# hypothesis' pytest plugin needs its native extension, which the --target copy lacks.
$PY -m pytest -q -rs --import-mode=importlib -p no:cacheprovider -p no:hypothesispytest tests/kernels/test_cuda.py
$PY bench/kernels_matmul.py --device cuda --budget-s 0.3 --out "${OUT:-bench/results}/kernels_matmul_cuda.json"
