#!/usr/bin/env bash
# Set up the .venv, build the embedded tiny model into exported/tiny-shapes and its student beside it (again
# only when the embedded checkpoint or the student's LoRA has changed since), and generate a picture.
#   scripts/demo.sh ["a prompt"] [more sdrun options]
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
up_to_date='
import json, sys
from sdexport import embedded
from sdexport.export.manifest import source_sha256
built = json.load(open("exported/tiny-shapes/sdexport_manifest.json"))["source"]["sha256"]
student = json.load(open("exported/tiny-shapes-lcm/sdexport_manifest.json"))["loras"][0]["sha256"]
sys.exit(built != source_sha256(embedded.CHECKPOINT) or student != source_sha256(embedded.STUDENT_LORA))'
.venv/bin/python -c "$up_to_date" 2>/dev/null || .venv/bin/sdexport build --force
prompt="${1:-a large red circle on a blue background}"
shift || true
exec .venv/bin/sdrun "$prompt" --model exported/tiny-shapes --out outputs/demo.png --overwrite "$@"
