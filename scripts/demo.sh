#!/usr/bin/env bash
# Set up the .venv, build the embedded tiny model into exported/tiny-shapes (once), and generate a picture.
#   scripts/demo.sh ["a prompt"] [more sdrun options]
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
[ -f exported/tiny-shapes/model_index.json ] || .venv/bin/sdexport build
prompt="${1:-a large red circle on a blue background}"
shift || true
exec .venv/bin/sdrun "$prompt" --model exported/tiny-shapes --out outputs/demo.png "$@"
