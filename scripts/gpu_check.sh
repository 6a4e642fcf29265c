#!/usr/bin/env bash
# The package on a GPU in one command (under 8 minutes on one GPU with 16 cores): device tests, mtrl bench
# (update per combiner, K=1 vs SB3, fp32/bf16/tf32, compile on/off, MT10 training steps/s with sync and async envs),
# a short MT10 training on CUDA with resume, evaluate and a video; one table on stdout, gpu_check/gpu_check.json.
#   bash scripts/gpu_check.sh [--out DIR]        (add --tiny for the seconds-long CPU version the test suite runs)
# PYTHON names the interpreter (default: python3 on PATH); the test suite passes its own.
set -euo pipefail
PYTHON="${PYTHON:-python3}"
cd "$(dirname "$0")/.."
if [ -z "${MUJOCO_GL:-}" ]; then
  if "$PYTHON" -c "import torch,sys; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; then
    export MUJOCO_GL=egl
  else
    export MUJOCO_GL=osmesa
  fi
fi
exec "$PYTHON" scripts/gpu_check.py "$@"
