"""`sdrun --low-memory` points to the int8-compact build when the folder is another one."""

import json
from pathlib import Path

from click.testing import CliRunner

from sdrun.cli import main

HINT = "--quantize int8-compact"


def test_low_memory_suggests_the_compact_build_unless_it_is_one(
    tiny_int8_folder: Path, tmp_path: Path
) -> None:
    quantization = json.loads((tiny_int8_folder / "sdexport_manifest.json").read_text())["quantization"]
    args = ["a small red circle on a white background", "--model", str(tiny_int8_folder), "--steps", "2",
            "--out", str(tmp_path / "out.png"), "--low-memory"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    assert (HINT in result.output) == (quantization != "int8-compact")
    quiet = CliRunner().invoke(main, [*args, "--quiet", "--overwrite"])
    assert quiet.exit_code == 0 and HINT not in quiet.output
