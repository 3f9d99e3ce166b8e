#!/usr/bin/env bash
# Set up the .venv with the test references, then run ruff and the fast tests.
# Extra arguments go to pytest (for example: scripts/test.sh -m slow).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh test
.venv/bin/ruff check .
exec .venv/bin/python -m pytest -q "$@"
