#!/usr/bin/env bash
# The GPU benchmark, as BENCHMARKS.md's GPU section reports it: SD 1.5 with random weights, 512x512,
# 50 Euler steps with guidance, sdrun on an fp16 build (onnxruntime's CUDA provider) against diffusers
# in PyTorch fp16 on the same card. Needs onnxruntime-gpu, PyTorch with CUDA, diffusers and nvidia-ml-py;
# on one H200 with 16 cores, about 2 minutes for the fp16 build and 2 more for the measurements.
#   benchmarks/run_gpu.sh [WORK] [RESULTS]      (default build/bench-gpu, WORK/results)
set -euo pipefail
WORK=${1:-build/bench-gpu}
RESULTS=${2:-$WORK/results}
PY=${PYTHON:-python3}
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 PYTHONUNBUFFERED=1
mkdir -p "$RESULTS"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
$PY -c "import onnxruntime, torch; print('onnxruntime', onnxruntime.__version__, 'torch', torch.__version__)"
$PY benchmarks/prepare.py --work "$WORK" --only sdrun-fp16
RUN=(--work "$WORK" --provider cuda --size 512 --steps 50 --full --generations 3 --repeats 10)
# Each system in its own process, one at a time; a second pass of both at the end.
$PY benchmarks/systems.py diffusers "${RUN[@]}" --out "$RESULTS/diffusers-1.json"
$PY benchmarks/systems.py sdrun --folder sdrun-fp16 "${RUN[@]}" --out "$RESULTS/sdrun-1.json"
$PY benchmarks/session_options.py "$WORK/sdrun-fp16/unet/model.onnx" --provider cuda --size 512 \
    --repeats 20 --out "$RESULTS/cuda-options.json"
$PY benchmarks/systems.py diffusers "${RUN[@]}" --out "$RESULTS/diffusers-2.json"
$PY benchmarks/systems.py sdrun --folder sdrun-fp16 "${RUN[@]}" --out "$RESULTS/sdrun-2.json"
