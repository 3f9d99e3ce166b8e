"""`sdexport build` through the CLI to the end: no SOURCE builds the embedded model into exported/<name>."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner
from transformers import CLIPTokenizer

import sdexport.embedded
from sdexport.cli import main
from sdrun.folder import open_model_folder


def test_build_without_source_makes_the_embedded_model_folder(
    tiny_checkpoint_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sdexport.embedded, "CHECKPOINT", tiny_checkpoint_file)
    # The shipped student's LoRA fits the shipped model only (the student is checked in tests/e2e).
    monkeypatch.setattr(sdexport.embedded, "STUDENT_LORA", tmp_path / "no-student-lora.safetensors")
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(main, ["build", "--skip-validation"])
    assert result.exit_code == 0, result.output
    folder = Path("exported") / tiny_checkpoint_file.stem
    open_model_folder(folder, verify_checksums=True)
    for component in ("text_encoder", "unet", "vae_encoder", "vae_decoder"):
        assert f"  {component}" in result.output
    assert "not validated" in result.output and "Done in" in result.output

    manifest = json.loads((folder / "sdexport_manifest.json").read_text())
    assert manifest["source"]["kind"] == "original"
    assert manifest["validation"]["enabled"] is False
    assert all(not c["validation"]["checks"] for c in manifest["components"].values())
    # A single file carries no tokenizer: SD 1.x's CLIP tokenizer is written.
    assert CLIPTokenizer.from_pretrained(folder / "tokenizer")("a cat").input_ids == [49406, 320, 2368, 49407]

    inspected = CliRunner().invoke(main, ["inspect", str(folder)])
    assert inspected.exit_code == 0 and inspected.output.count("not validated") == 4


def test_python_dash_m_sdexport_is_the_command() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "sdexport", "--help"], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert "build" in done.stdout and "inspect" in done.stdout
