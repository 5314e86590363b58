#!/usr/bin/env bash
# Every check that needs a CUDA GPU, in one run (for a machine lent for a few minutes): the CUDA
# tests (no synchronisation in a captured step; the device path against the host path), then the
# probe's overhead on CUDA and the operations it dispatches. Needs torch with CUDA, numpy and
# pytest; no Qt. Writes its logs and the benchmark's JSON to $OUT (default /tmp/glassbox-gpu).
#
#   OUT=/some/dir bash scripts/gpu_check.sh
set -u
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/glassbox-gpu}
PY=${PY:-python3}
mkdir -p "$OUT"
if ! $PY -c "import torch; print(torch.__version__, torch.cuda.get_device_name(0))" > "$OUT/device.txt"; then
    echo "no CUDA device (or no torch) for $PY" >&2
    exit 1
fi
cat "$OUT/device.txt"
status=0
$PY -m pytest -q -p no:cacheprovider tests/engine/test_cuda.py 2>&1 | tee "$OUT/test_cuda.txt"
[ "${PIPESTATUS[0]}" -eq 0 ] || status=1
$PY bench/probe_overhead.py --device cuda --blocks 7 --json "$OUT/probe_overhead_cuda.json" 2>&1 \
    | tee "$OUT/probe_overhead_cuda.txt"
$PY bench/probe_ops.py --json "$OUT/probe_ops.json" 2>&1 | tee "$OUT/probe_ops.txt"
exit $status
