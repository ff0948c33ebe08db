#!/usr/bin/env bash
# GPU check in one command (< 8 min on one H200): every recipe family's AMP training step and its
# training and S5 throughput, the HPA networks at 512 px, DDP on all visible GPUs; one table.
#   bash benchmarks/gpu_check.sh [--FAMILIES N] [--DDP false]
set -euo pipefail
cd "$(dirname "$0")/.."
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || echo "no nvidia-smi"
PYTHONUNBUFFERED=1 exec "${PYTHON:-python}" benchmarks/gpu_check.py "$@"
