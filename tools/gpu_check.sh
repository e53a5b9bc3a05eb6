#!/usr/bin/env bash
# Issue #14's GPU check, for a machine with a CUDA GPU (NOT run in CI, which has none).
# Budget: under 8 minutes in all (the step limits add up to 7 min 40 s); everything goes to $OUT
# (or ./gpu_results), one file per step, and host_time.json is rewritten after every section.
#   bash tools/gpu_check.sh            # from the repository root, in an env with numba-cuda + torch
# Dry run of the Python parts without a GPU (tiny shapes, the simulator; checks it runs, no figures):
#   NUMBA_ENABLE_CUDASIM=1 NUMBANORM_CUDA_THREADS=16 NUMBANORM_GPU_CHECK_TINY=1 PYTHONPATH=. \
#       python tools/gpu_host_time.py --out /tmp/dry
set -u
OUT="${OUT:-$(pwd)/gpu_results}"
mkdir -p "$OUT"
PY="${PYTHON:-python}"
export PYTHONPATH="$(pwd)${PYTHONPATH:+:$PYTHONPATH}"  # this checkout, installed or not
export NUMBA_CUDA_LOW_OCCUPANCY_WARNINGS=0
step() {  # step NAME SECONDS CMD...: run with a time limit, log to $OUT/NAME.txt, never stop the script
    local name=$1 limit=$2; shift 2
    echo "== $name (limit ${limit}s): $*" | tee "$OUT/$name.txt"
    local t0=$SECONDS
    timeout "$limit" "$@" >>"$OUT/$name.txt" 2>&1
    echo "== $name: exit $? after $((SECONDS - t0)) s" | tee -a "$OUT/$name.txt"
}
{ nvidia-smi; "$PY" -m numbanorm info; echo "NUMBANORM_CUDA_LAUNCH=${NUMBANORM_CUDA_LAUNCH:-specialized (default)}"; } \
    >"$OUT/00_machine.txt" 2>&1
# 1. the CUDA tests on the GPU (test_cuda_pipelines.py's counting hooks are the simulator's: it skips)
step 01_tests 130 env NUMBANORM_TEST_GPU=1 "$PY" -m pytest -q -p no:cacheprovider -p no:xdist tests/test_cuda.py \
    tests/test_cuda_pipelines.py tests/test_cuda_device.py
# 2. the whole-call benchmark beside PyTorch, default shapes and 4x
step 02_bench_default 80 "$PY" -m numbanorm bench --device cuda --compare torch --repeats 11 --json "$OUT/02_bench_default.json"
step 03_bench_4x 90 "$PY" -m numbanorm bench --device cuda --compare torch --repeats 5 \
    --shapes 128x64x56x56,32768x1024,262144x128 --json "$OUT/03_bench_4x.json"
# 3. host time per call of every device-path op beside PyTorch; the ops under each launch mode
#    (typed, specialized, direct) and the toy kernel's argument forms (device arrays, torch
#    tensors, CAI objects, a specialization, raw pointers); float16; a CUDA-graph capture of
#    forward+backward
step 04_host_time 160 "$PY" tools/gpu_host_time.py --out "$OUT"
echo "results in $OUT"
