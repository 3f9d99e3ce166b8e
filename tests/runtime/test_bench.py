"""`sdrun bench DIR`: every stage reported, in the table and in the JSON file, for both memory policies."""

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from sdrun.cli import main

STAGES = [
    "create sessions",
    "text encoding (batch 2)",
    "UNet first call (batch 2)",
    "UNet step, guidance (batch 2)",
    "sampler per step",
    "VAE decode (1 image)",
    "generation, 3 steps",
]


@pytest.mark.parametrize("flags", [[], ["--low-memory"]])
def test_bench_reports_every_stage(tiny_onnx_dir: Path, tmp_path: Path, flags: list[str]) -> None:
    out = tmp_path / "bench.json"
    args = ["bench", tiny_onnx_dir, "--size", 64, "--steps", 3, "--repeats", 2, "--json", out, *flags]
    result = CliRunner().invoke(main, [str(arg) for arg in args])
    assert result.exit_code == 0, result.output
    assert all(stage in result.output for stage in STAGES)

    report = json.loads(out.read_text())
    assert [stage["name"] for stage in report["stages"]] == STAGES
    repeats = {stage["name"]: len(stage["seconds"]) for stage in report["stages"]}
    assert repeats["UNet step, guidance (batch 2)"] == 2 and repeats["text encoding (batch 2)"] == 3
    assert all(stage["peak_mb"] > 0 and min(stage["seconds"]) > 0 for stage in report["stages"])
    assert report["info"]["low_memory"] == bool(flags)
    assert set(report["info"]["session_seconds"]) == {"text_encoder", "unet", "vae_decoder"}


def test_bench_of_a_missing_folder_is_one_line(tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["bench", str(tmp_path / "nothing")])
    assert result.exit_code != 0
    assert result.output.strip().splitlines() == [
        f"Error: model folder {tmp_path / 'nothing'} does not exist"
    ]
