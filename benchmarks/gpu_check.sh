#!/usr/bin/env bash
# GPU check in one command (< 8 min on one H200): every recipe family's AMP training step and its
# training and S5 throughput, the HPA networks at 512 px, DDP on all visible GPUs; one table; then
# S5 at screen scale (benchmarks/bench_scale.py) when the demo's runs are in output/.
#   bash benchmarks/gpu_check.sh [--FAMILIES N] [--DDP false]
set -euo pipefail
cd "$(dirname "$0")/.."
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || echo "no nvidia-smi"
PYTHONUNBUFFERED=1 "${PYTHON:-python}" benchmarks/gpu_check.py "$@"
# S5 at screen scale on the GPU: needs the demo's runs (bash run_all.sh, a few minutes on a GPU)
if [ -f output/demo_p1/fold0/best.pth ] && [ -f output/demo_p2/fold0/best.pth ]; then
  PYTHONUNBUFFERED=1 "${PYTHON:-python}" benchmarks/bench_scale.py --DEVICE cuda --N_FIELDS 1000,5000 --SPREAD_FIELDS 500
else
  echo "S5 scale row skipped: no demo runs in output/ (bash run_all.sh first)"
fi
