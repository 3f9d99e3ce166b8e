"""`sdrun --from-png` and `--from-infotext` on web UI texts: the settings they honour, one warning naming
every field they do not, and the model's hash written into the PNG as the web UI writes it."""

import json
import shutil
from pathlib import Path

import pytest
from cli_runs import assert_one_line_error, png_parameters, run_cli
from click.testing import CliRunner
from PIL import Image, PngImagePlugin

from sdrun.cli import main
from sdrun.folder_layout import MANIFEST_FILE, SOURCE_KEY
from sdrun.infotext import MAX_PARAMETERS_CHARACTERS, parse_parameters

# A civitai-style text small enough for the tiny model (64x64, 2 steps), with fields sdrun has no setting for.
WEB_UI_TEXT = (
    "a red cube, <lora:add_detail:0.5>\n"
    "Negative prompt: blurry\n"
    "Steps: 2, Sampler: Euler a, Schedule type: Automatic, CFG scale: 6, Seed: 321, Size: 64x64, "
    "Model hash: 0123456789, Model: v1-5-pruned-emaonly, VAE: vae-ft-mse.safetensors, "
    'ADetailer model: face_yolov8n.pt, ADetailer prompt: "detailed face, smile", '
    'Lora hashes: "add_detail: 7c6bad76eb54", Version: v1.10.1'
)
UNHONOURED = ("VAE", "ADetailer model", "ADetailer prompt", "Lora hashes")


def _warnings(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("Warning: ")]


def _check_made_from_the_text(out: Path, stderr: str, source: str) -> None:
    # One line for the fields sdrun does not honour, one for the LoRA tag it does not apply.
    warning, lora = sorted(_warnings(stderr), key=lambda line: "does not honour" not in line)
    assert "add_detail" in lora
    assert warning.startswith(f"Warning: {source} has 4 fields that sdrun does not honour")
    assert all(key in warning for key in UNHONOURED), warning
    made = parse_parameters(png_parameters(out))
    assert (made.prompt, made.negative_prompt, made.seed, made.steps) == (
        "a red cube, <lora:add_detail:0.5>",
        "blurry",
        321,
        2,
    )
    assert (made.sampler, made.guidance_scale, made.width) == ("k_euler_a", 6.0, 64)


def test_from_infotext_reads_a_pasted_text(tiny_sdexport_dir: Path, tmp_path: Path) -> None:
    text = tmp_path / "civitai.txt"
    text.write_text(WEB_UI_TEXT + "\n", encoding="utf-8")
    out = tmp_path / "again.png"
    result = run_cli("--from-infotext", text, "--model", tiny_sdexport_dir, "--out", out)
    assert result.exit_code == 0, result.output
    _check_made_from_the_text(out, result.stderr, str(text))
    assert "was made with model 'v1-5-pruned-emaonly'" in result.stderr


def test_from_infotext_reads_standard_input(tiny_sdexport_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "stdin.png"
    args = ["--from-infotext", "-", "--model", str(tiny_sdexport_dir), "--out", str(out), "--quiet"]
    result = CliRunner().invoke(main, args, input=WEB_UI_TEXT.encode())
    assert result.exit_code == 0, result.output
    _check_made_from_the_text(out, result.stderr, "-")


def test_from_png_names_the_fields_of_a_web_ui_png(tiny_sdexport_dir: Path, tmp_path: Path) -> None:
    info = PngImagePlugin.PngInfo()
    info.add_text("parameters", WEB_UI_TEXT)
    image = tmp_path / "webui.png"
    Image.new("RGB", (64, 64)).save(image, pnginfo=info)
    out = tmp_path / "again.png"
    result = run_cli("--from-png", image, "--model", tiny_sdexport_dir, "--out", out, "--quiet")
    assert result.exit_code == 0, result.output
    _check_made_from_the_text(out, result.stderr, str(image))


def test_sdruns_own_png_brings_no_warning(tiny_sdexport_dir: Path, tmp_path: Path) -> None:
    first, again = tmp_path / "first.png", tmp_path / "again.png"
    made = run_cli("a cube", "--model", tiny_sdexport_dir, "--out", first, "--steps", "2", "--quiet")
    assert made.exit_code == 0, made.output
    result = run_cli("--from-png", first, "--model", tiny_sdexport_dir, "--out", again, "--quiet")
    assert result.exit_code == 0 and _warnings(result.stderr) == [], result.output


@pytest.mark.parametrize(
    "content, message",
    [
        (b"a" * (4 * MAX_PARAMETERS_CHARACTERS + 1), "is larger than a parameters text sdrun reads"),
        (b"\xff\xfe a cat\nSteps: 2", "is not UTF-8 text"),
        (b"just a prompt", "has no Steps, Sampler"),
    ],
    ids=["huge", "not-utf8", "no-fields"],
)
def test_unreadable_infotext_files_are_one_line_errors(
    tiny_sdexport_dir: Path, tmp_path: Path, content: bytes, message: str
) -> None:
    text = tmp_path / "given.txt"
    text.write_bytes(content)
    assert_one_line_error(run_cli("--from-infotext", text, "--model", tiny_sdexport_dir), message)


@pytest.mark.parametrize(
    "args, message",
    [
        (["--from-png", "a.png", "--from-infotext", "a.txt"], "not both"),
        (["--from-infotext", "missing.txt"], "cannot read missing.txt"),
    ],
)
def test_from_infotext_errors_are_one_line(tiny_sdexport_dir: Path, args: list[str], message: str) -> None:
    result = run_cli(*args, "--model", tiny_sdexport_dir)
    assert result.exit_code != 0 and message in result.output and "Traceback" not in result.output


def test_the_checkpoints_hash_is_written_and_compared(tiny_sdexport_dir: Path, tmp_path: Path) -> None:
    """A folder built from one checkpoint file writes its Model hash (the first 10 hex digits of the file's
    sha256, as the web UI does); a text made with another checkpoint gets a note."""
    folder = Path(shutil.copytree(tiny_sdexport_dir, tmp_path / "model"))
    manifest = json.loads((folder / MANIFEST_FILE).read_text())
    manifest[SOURCE_KEY] = {**manifest[SOURCE_KEY], "kind": "original", "sha256": "abcdef0123" + "5" * 54}
    (folder / MANIFEST_FILE).write_text(json.dumps(manifest))
    out = tmp_path / "hashed.png"
    made = run_cli("a cube", "--model", folder, "--out", out, "--steps", "2", "--quiet")
    assert made.exit_code == 0, made.output
    assert ", Model hash: abcdef0123, Model: model, " in png_parameters(out)
    assert parse_parameters(png_parameters(out)).model_hash == "abcdef0123"
    text = tmp_path / "other.txt"
    text.write_text(WEB_UI_TEXT)
    result = run_cli("--from-infotext", text, "--model", folder, "--out", tmp_path / "again.png")
    assert result.exit_code == 0, result.output
    note = "made with the checkpoint of Model hash 0123456789; this model folder was built from abcdef0123"
    assert note in result.stderr
    assert "Model hash: abcdef0123" in png_parameters(tmp_path / "again.png")
