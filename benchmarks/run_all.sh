#!/usr/bin/env bash
# The whole benchmark, as BENCHMARKS.md reports it. About 50 minutes on 2 cores; needs ~25 GB of disk
# under WORK and ~15 GB of memory at its peak (the int8 build).
#   benchmarks/run_all.sh [WORK]      (default build/bench)
set -euo pipefail
WORK=${1:-build/bench}
PY=${PYTHON:-.venv/bin/python}
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
$PY benchmarks/prepare.py --work "$WORK"
$PY benchmarks/variants.py --work "$WORK"
$PY benchmarks/session_options.py "$WORK/sdrun-fp32/unet/model.onnx" --size 512 --out "$WORK/session-options.json"
$PY benchmarks/memory_ablation.py --work "$WORK" --size 512 --steps 2
$PY benchmarks/compare.py --work "$WORK" --sizes 256 512 --full-sizes 256 512 \
    --full-systems "sdrun fp32" "sdrun int8-compact, low-memory" "diffusers (PyTorch)"
