#!/usr/bin/env bash
# Every check that needs a CUDA GPU, in one run (for a machine lent for a few minutes): the CUDA
# tests (no synchronisation in a captured step; the device path against the host path), then the
# probe's overhead on CUDA (a few minutes on an H200, the xl models included), then the same with
# the device path's batching limits changed (nothing batched; conv-sized outputs batched too), then
# a profile of two GPU-bound models' captures. At most 8 files, as a lent machine returns.
# Needs torch with CUDA, numpy, pytest and pytest-timeout; no Qt. Writes its logs and the
# benchmarks' JSON to $OUT (default /tmp/glassbox-gpu). If the sync test fails, it is run once
# more with every batch summed by index_add_ (no segment_reduce), to tell which reduction
# synchronised. (`bench/probe_ops.py` needs no GPU: run it anywhere.)
#
#   OUT=/some/dir bash scripts/gpu_check.sh
set -u
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/glassbox-gpu}
PY=${PY:-python3}
export PYTHONUNBUFFERED=1
mkdir -p "$OUT"
if ! $PY -c "import torch; print(torch.__version__, torch.cuda.get_device_name(0))" > "$OUT/device.txt"; then
    echo "no CUDA device (or no torch) for $PY" >&2
    exit 1
fi
cat "$OUT/device.txt"
status=0
timeout 240 $PY -m pytest -q -p no:cacheprovider --tb=short tests/engine/test_cuda.py 2>&1 | tee "$OUT/test_cuda.txt"
if [ "${PIPESTATUS[0]}" -ne 0 ]; then
    status=1
    echo "--- sync test again, every batch summed by index_add_ ---"
    timeout 120 $PY -c "import sys, pytest, engine.device_stats as d; d.ATOMIC_SUMS_MAX = 1 << 40; \
sys.exit(pytest.main(['-q', '-p', 'no:cacheprovider', '--tb=short', 'tests/engine/test_cuda.py', '-k', 'synchronise']))" \
        2>&1 | tee "$OUT/test_cuda_index_add.txt"
fi
timeout 420 $PY bench/probe_overhead.py --device cuda --blocks 7 --json "$OUT/probe_overhead_cuda.json" 2>&1 \
    | tee "$OUT/probe_overhead_cuda.txt"
timeout 120 $PY bench/probe_overhead.py --device cuda --blocks 5 --only mlp cnn transformer --batch-budget 0 \
    2>&1 | tee "$OUT/batch_budget_0.txt"
timeout 120 $PY bench/probe_overhead.py --device cuda --blocks 5 --only cnn cnn-large --batched-max 1048576 \
    2>&1 | tee "$OUT/batched_max_1m.txt"
# Where the GPU-bound models' captures spend their time (long: to the file only).
timeout 120 $PY bench/profile_capture.py --device cuda --only mlp-xl transformer-xl --steps 32 \
    > "$OUT/profile_xl.txt" 2>&1
exit $status
