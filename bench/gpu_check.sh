#!/usr/bin/env bash
# One prepared GPU check for tierlm.kernels (about 2 minutes on an H100): every CUDA test of the
# kernels (int8 _int_mm, int4 tinygemm, 2:4 semi-structured sparsity, sparse-int4 / low-rank /
# composite layers), then speed tables against fp16 on Gemma 3 270M's shapes. Writes the test log,
# the tables and their JSON to $OUT when set (else bench/results/). Needs only torch with CUDA,
# pytest and rich: an offline image without the last two can be given build/devsite, made here
# with `pip install --target build/devsite pytest rich` (pure-Python wheels), carried along.
# Run from anywhere: bash bench/gpu_check.sh. Exit status: 1 if any test failed.
set -uo pipefail
cd "$(dirname "$0")/.."
OUTDIR=${OUT:-bench/results}
mkdir -p "$OUTDIR"
PY=${PYTHON:-python3}

# tierlm.kernels is the top-level kernels/ folder (a setuptools package-dir mapping). Rather than
# installing, map it with a throwaway package: tierlm/ copied, kernels/ linked inside it.
SHIM=$(mktemp -d)
trap 'rm -rf "$SHIM"' EXIT
cp -r tierlm "$SHIM/tierlm"
ln -s "$PWD/kernels" "$SHIM/tierlm/kernels"
export PYTHONPATH="$SHIM:$PWD${PYTHONPATH:+:$PYTHONPATH}"
if [ -d build/devsite ]; then export PYTHONPATH="$PYTHONPATH:$PWD/build/devsite"; fi

{
  $PY -c 'import torch; print("torch", torch.__version__, "cuda", torch.version.cuda, torch.cuda.get_device_name(), "sm", torch.cuda.get_device_capability())'
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
} 2>&1 | tee "$OUTDIR/gpu_device.txt"

status=0
# --confcutdir keeps pytest to tests/kernels' own conftest (the root one builds HF/GGUF fixtures
# that need transformers and gguf, which a GPU image need not have).
timeout 300 $PY -m pytest -q -rs -p no:cacheprovider --confcutdir=tests/kernels \
  tests/kernels/test_cuda.py tests/kernels/test_cuda_sparse.py 2>&1 | tee "$OUTDIR/gpu_tests.txt"
[ "${PIPESTATUS[0]}" -eq 0 ] || status=1

timeout 300 $PY bench/kernels_sparse.py --device cuda --budget-s 0.2 2>&1 | tee "$OUTDIR/kernels_sparse_cuda.txt"
[ "${PIPESTATUS[0]}" -eq 0 ] || status=1
if [ "$OUTDIR" != bench/results ]; then cp bench/results/kernels_sparse_cuda.json "$OUTDIR/" || status=1; fi

if [ -f bench/kernels_matmul.py ]; then
  timeout 300 $PY bench/kernels_matmul.py --device cuda --budget-s 0.2 --out "$OUTDIR/kernels_matmul_cuda.json" 2>&1 \
    | tee "$OUTDIR/kernels_matmul_cuda.txt"
  [ "${PIPESTATUS[0]}" -eq 0 ] || status=1
fi
exit $status
