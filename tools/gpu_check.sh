#!/usr/bin/env bash
# Issue #14's GPU check, for a machine with a CUDA GPU (NOT run in CI, which has none).
# Budget: under 8 minutes in all.  Everything goes to $OUT (or ./gpu_results), one file per step.
#   bash tools/gpu_check.sh            # from the repository root, in an env with numba-cuda + torch
set -u
OUT="${OUT:-$(pwd)/gpu_results}"
mkdir -p "$OUT"
PY="${PYTHON:-python}"
export NUMBA_CUDA_LOW_OCCUPANCY_WARNINGS=0
step() {  # step NAME SECONDS CMD...: run with a time limit, log to $OUT/NAME.txt, never stop the script
    local name=$1 limit=$2; shift 2
    echo "== $name (limit ${limit}s): $*" | tee "$OUT/$name.txt"
    local t0=$SECONDS
    timeout "$limit" "$@" >>"$OUT/$name.txt" 2>&1
    echo "== $name: exit $? after $((SECONDS - t0)) s" | tee -a "$OUT/$name.txt"
}
{ nvidia-smi; "$PY" -m numbanorm info; } >"$OUT/00_machine.txt" 2>&1
# 1. the CUDA tests on the GPU (test_cuda_pipelines.py's counting hooks are the simulator's: it skips)
step 01_tests 150 env NUMBANORM_TEST_GPU=1 "$PY" -m pytest -q -p no:cacheprovider tests/test_cuda.py tests/test_cuda_pipelines.py
# 2. the whole-call benchmark beside PyTorch, default shapes and 4x
step 02_bench_default 100 "$PY" -m numbanorm bench --device cuda --compare torch --repeats 21 --json "$OUT/02_bench_default.json"
step 03_bench_4x 120 "$PY" -m numbanorm bench --device cuda --compare torch --repeats 11 \
    --shapes 128x64x56x56,32768x1024,262144x128 --json "$OUT/03_bench_4x.json"
# 3-5. host time per call, launch-argument variants, one CUDA-graph capture
step 04_host_time 90 "$PY" tools/gpu_host_time.py --out "$OUT"
echo "results in $OUT"
