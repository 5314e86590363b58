#!/usr/bin/env bash
# Every check that needs a CUDA GPU, in one run that fits a lent machine's 10-minute command:
#   1. the CUDA tests: no synchronisation in a captured step (eager, and with step graphs after
#      their recordings); replayed step graphs against the same reductions run eagerly; the
#      device path against the host path;
#   2. the probe's overhead on CUDA for the built-in and large models, eagerly, then with step
#      graphs (ProbeConfig.step_graphs, the default), in that order, so the two tables compare.
# FULL=1 adds (several more minutes; run it as a second command): the xl models, the batching
# limits changed, and a profile of two GPU-bound models' captures.
# Needs torch with CUDA, numpy, pytest and pytest-timeout; no Qt. Writes its logs and the
# benchmarks' JSON (at most 8 files, what a lent machine returns) to $OUT (default
# /tmp/glassbox-gpu). If the sync test fails, it is run once more with every batch summed by
# index_add_ (no segment_reduce), to tell which reduction synchronised. (`bench/probe_ops.py`
# needs no GPU: run it anywhere.)
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
timeout 150 $PY -m pytest -q -p no:cacheprovider --tb=short tests/engine/test_cuda.py 2>&1 | tee "$OUT/test_cuda.txt"
if [ "${PIPESTATUS[0]}" -ne 0 ]; then
    status=1
    echo "--- sync test again, every batch summed by index_add_ ---"
    timeout 60 $PY -c "import sys, pytest, engine.device_stats as d; d.ATOMIC_SUMS_MAX = 1 << 40; \
sys.exit(pytest.main(['-q', '-p', 'no:cacheprovider', '--tb=short', 'tests/engine/test_cuda.py', '-k', 'synchronise']))" \
        2>&1 | tee -a "$OUT/test_cuda.txt"
fi
MODELS="mlp cnn transformer cnn-large transformer-large"
timeout 130 $PY bench/probe_overhead.py --device cuda --blocks 5 --only $MODELS --no-step-graphs \
    --json "$OUT/probe_overhead_eager.json" 2>&1 | tee "$OUT/probe_overhead_eager.txt"
timeout 130 $PY bench/probe_overhead.py --device cuda --blocks 5 --only $MODELS --step-graphs \
    --json "$OUT/probe_overhead_graphs.json" 2>&1 | tee "$OUT/probe_overhead_graphs.txt"
timeout 120 $PY bench/probe_overhead.py --device cuda --blocks 3 --only mlp-xl cnn-xl transformer-xl \
    2>&1 | tee "$OUT/probe_overhead_xl.txt"
{ timeout 40 $PY -c "import sys; from engine.report import main; sys.exit(main(sys.argv[1:]))" \
    --scenario shapes-cnn --steps 50 --device cuda --json "$OUT/report_cuda.json" || status=1; } 2>&1 | tail -5
if [ "${FULL:-0}" = 1 ]; then
    { timeout 120 $PY bench/probe_overhead.py --device cuda --blocks 5 --only mlp cnn transformer --batch-budget 0
      timeout 120 $PY bench/probe_overhead.py --device cuda --blocks 5 --only cnn cnn-large --batched-max 1048576
    } 2>&1 | tee "$OUT/batching_limits.txt"
    # Where the GPU-bound models' captures spend their time (long: to the file only).
    timeout 120 $PY bench/profile_capture.py --device cuda --only mlp-xl transformer-xl --steps 32 \
        > "$OUT/profile_xl.txt" 2>&1
fi
exit $status
