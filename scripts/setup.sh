#!/usr/bin/env bash
# Make (or refresh) the project-local .venv. Safe to run again.
#   scripts/setup.sh          runtime + export side
#   scripts/setup.sh test     ... + the test references (diffusers, transformers, optimum)
set -euo pipefail
cd "$(dirname "$0")/.."
extras="export"
[ "${1:-}" = "test" ] && extras="export,test"
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
