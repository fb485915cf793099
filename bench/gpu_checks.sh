#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
#
# The checks that need an NVIDIA GPU, in one run (a few minutes on an H200), for a
# session that is lent one. From the repository root:
#
#     OUT=/some/dir bash bench/gpu_checks.sh
#
# cache_core needs only NumPy and CuPy, and the tests below only pytest and hypothesis
# besides, so no agent dependencies have to be installed on the GPU host. What runs:
#
# 1. the cache facade's property tests on CuPy (CUDA kernels and the device value store
#    against a dict model: the CPU/GPU equivalence check of the cache);
# 2. the prefetch models on CuPy against the host (same tables, same answers, same replay
#    figures: tests/unit/test_models_device.py runs its device cases on CuPy as well);
# 3. the CUDA kernel sources compiled by nvcc;
# 4. the models' inference cost per access on CuPy, next to NumPy on the same host
#    (bench/bench_prefetch.py --inference-only).
#
# Each step's output goes to $OUT/<step>.log; the exit status is that of the first step
# that failed (the later ones still run).
set -u
OUT=${OUT:-$(mktemp -d)}
export PYTHONPATH=${PYTHONPATH:+$PYTHONPATH:}.
export PYTHONUNBUFFERED=1
status=0

step() {
    local name=$1
    shift
    echo "== $name: $*"
    if "$@" >"$OUT/$name.log" 2>&1; then
        echo "   ok"
    else
        local rc=$?
        echo "   FAILED (exit $rc); last lines:"
        tail -n 20 "$OUT/$name.log"
        [ "$status" -eq 0 ] && status=$rc
    fi
}

python3 -c "import cupy; print('cupy', cupy.__version__, cupy.cuda.runtime.getDeviceProperties(0)['name'].decode())" || exit 1
step cache_facade env PREDIS_TEST_BACKEND=cupy python3 -m pytest -q -p no:cacheprovider tests/unit/test_cache_facade.py
step models_device env PREDIS_TEST_BACKEND=cupy python3 -m pytest -q -p no:cacheprovider tests/unit/test_models_device.py
step kernels python3 -m pytest -q -p no:cacheprovider tests/unit/test_kernels_compile.py
step inference_cupy python3 bench/bench_prefetch.py --inference-only --backend cupy
step inference_numpy python3 bench/bench_prefetch.py --inference-only --backend numpy
echo "logs in $OUT"
exit "$status"
