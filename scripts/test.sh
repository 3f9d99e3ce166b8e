#!/usr/bin/env bash
# Set up the .venv with the test references, then run ruff and the fast tests.
# Extra arguments go to pytest (for example: scripts/test.sh -m slow -n 0).
# Two workers, each taking whole test files (their module fixtures build a folder once): most tests keep
# only one core of two busy, so two at a time take about 0.75x the wall time. `-n 0` runs them in this
# process, as the full-size slow tests need (about 10 GB each).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh test
.venv/bin/ruff check .
exec .venv/bin/python -m pytest -q -n 2 --dist loadfile "$@"
