#!/usr/bin/env bash
# The GPU check in one command (see benchmarks/gpu_check.py for what it runs).
#   bash benchmarks/gpu_check.sh [--out FILE]          on a machine with one CUDA GPU (<= 8 min on an H100)
#   bash benchmarks/gpu_check.sh --dry [--out FILE]    the same code on the CPU at tiny sizes (CI)
# Writes a JSON of figures (default $OUT/gpu_check.json, else ./gpu_check.json); exit 1 if a section failed.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-}
if [ -z "$PY" ]; then
  if [ -x .venv/bin/python ]; then PY=.venv/bin/python; else PY=python3; fi
fi
export CUBLAS_WORKSPACE_CONFIG=${CUBLAS_WORKSPACE_CONFIG:-:4096:8}  # deterministic cuBLAS (the tests need it)
export WANDB_MODE=${WANDB_MODE:-offline} HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1
exec "$PY" benchmarks/gpu_check.py "$@"
