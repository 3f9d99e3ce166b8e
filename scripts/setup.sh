#!/usr/bin/env bash
# Make (or refresh) the project-local .venv. Safe to run again.
#   scripts/setup.sh          runtime + export side
#   scripts/setup.sh test     ... + the server extra, the test references (diffusers, transformers, optimum), and
#                             .venv/openvino (onnxruntime-openvino) for the OpenVINO provider tests
set -euo pipefail
cd "$(dirname "$0")/.."
extras="export"
[ "${1:-}" = "test" ] && extras="export,test,serve"
[ -x .venv/bin/python ] || python3 -m venv .venv
py=.venv/bin/python
$py -m pip install -q --disable-pip-version-check --upgrade pip
# torch first and pinned: an unpinned torch would pull a multi-GB CUDA build.
$py -c 'import torch' 2>/dev/null || $py -m pip install -q --disable-pip-version-check torch==2.13.0
$py -m pip install -q --disable-pip-version-check -e ".[$extras]"
# The oldest onnxruntime sdrun supports, beside the current one for the tests of the folder checks
# (tests/runtime/test_old_onnxruntime.py): it follows any external-data path a graph names.
if [ "${1:-}" = "test" ] && [ ! -d .venv/onnxruntime-1.23 ]; then
  $py -m pip install -q --disable-pip-version-check --no-deps --target .venv/onnxruntime-1.23 onnxruntime==1.23.2
fi
# k-diffusion, the reference of AUTOMATIC1111's samplers (tests/runtime/test_a1111_samplers.py), without its
# dependencies (torchvision, clean-fid, wandb...): the tests load only its sampling and external modules.
if [ "${1:-}" = "test" ] && [ ! -d .venv/k-diffusion ]; then
  $py -m pip install -q --disable-pip-version-check --no-deps --target .venv/k-diffusion k-diffusion==0.1.1.post1
fi
# onnxruntime with the OpenVINO execution provider, for tests/runtime/test_openvino.py. Its wheel replaces
# the onnxruntime package (same import name), so it gets an environment of its own: the runtime's
# dependencies, onnxruntime-openvino as pinned by pyproject's openvino extra, and the project without its
# dependencies (no onnxruntime, no torch).
if [ "${1:-}" = "test" ]; then
  [ -x .venv/openvino/bin/python ] || $py -m venv .venv/openvino
  ov=.venv/openvino/bin/python
  $ov -m pip install -q --disable-pip-version-check numpy tokenizers pillow click pytest onnxruntime-openvino==1.24.1
  $ov -m pip install -q --disable-pip-version-check --no-deps -e .
fi
