"""The `sdrun` command on the optimum-exported tiny model: PNGs with their settings, reproduction from a
PNG, output patterns, progress, one-line errors, and a run in a process where torch cannot be imported."""

import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from cli_runs import assert_one_line_error, png_parameters, png_pixels, run_cli
from PIL import Image

from sdrun.infotext import parse_parameters

FAST = ["--steps", "3", "--seed", "5"]


@pytest.fixture
def folder_copy(tiny_onnx_dir: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(tiny_onnx_dir, tmp_path / tiny_onnx_dir.name))


def test_prompt_writes_a_png_with_its_settings(tiny_onnx_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "cube.png"
    result = run_cli(
        "a red cube, on a table",
        "--model",
        tiny_onnx_dir,
        "--out",
        out,
        "--negative",
        "dark",
        "--guidance",
        "6",
        "--sampler",
        "dpmpp_2m",
        *FAST,
    )
    assert result.exit_code == 0, result.output
    assert result.stdout == f"Wrote {out}\n"
    assert "CPU execution provider" in result.stderr and "Sampling" in result.stderr
    settings = parse_parameters(png_parameters(out))
    assert (settings.prompt, settings.negative_prompt, settings.sampler) == (
        "a red cube, on a table",
        "dark",
        "dpmpp_2m",
    )
    assert (settings.steps, settings.seed, settings.guidance_scale) == (3, 5, 6.0)
    assert (settings.width, settings.height, settings.model) == (64, 64, tiny_onnx_dir.name)
    with Image.open(out) as image:
        assert image.size == (64, 64)


def test_quiet_prints_only_where_images_went(tiny_sdexport_dir: Path, tmp_path: Path) -> None:
    """(On a folder with a manifest: one without gets a warning that nothing could be verified.)"""
    result = run_cli("a cube", "--model", tiny_sdexport_dir, "--out", tmp_path / "q.png", "--quiet", *FAST)
    assert result.exit_code == 0, result.output
    assert result.stderr == ""
    assert result.stdout == f"Wrote {tmp_path / 'q.png'}\n"


def test_from_png_reproduces_the_image(tiny_onnx_dir: Path, tmp_path: Path) -> None:
    first, again, other = tmp_path / "first.png", tmp_path / "again.png", tmp_path / "other.png"
    assert (
        run_cli(
            'a cube, "quoted"', "--model", tiny_onnx_dir, "--out", first, "--negative", "blurry, dark", *FAST
        ).exit_code
        == 0
    )
    assert run_cli("--from-png", first, "--model", tiny_onnx_dir, "--out", again).exit_code == 0
    np.testing.assert_array_equal(png_pixels(first), png_pixels(again))
    assert png_parameters(first) == png_parameters(again)

    assert (
        run_cli("--from-png", first, "--model", tiny_onnx_dir, "--out", other, "--seed", "6").exit_code == 0
    )
    assert parse_parameters(png_parameters(other)).seed == 6
    assert np.abs(png_pixels(first) - png_pixels(other)).max() > 10


def test_from_png_reproduces_image_to_image(tiny_onnx_dir: Path, tmp_path: Path) -> None:
    init, first, again = tmp_path / "init.png", tmp_path / "first.png", tmp_path / "again.png"
    Image.new("RGB", (64, 48), (180, 40, 40)).save(init)
    result = run_cli(
        "a cube", "--model", tiny_onnx_dir, "--out", first, "--init-image", init, "--strength", "0.6", *FAST
    )
    assert result.exit_code == 0, result.output
    settings = parse_parameters(png_parameters(first))
    assert (settings.strength, settings.width, settings.height) == (0.6, 64, 48)

    assert_one_line_error(
        run_cli("--from-png", first, "--model", tiny_onnx_dir), "pass that image with --init-image"
    )
    assert (
        run_cli("--from-png", first, "--model", tiny_onnx_dir, "--init-image", init, "--out", again).exit_code
        == 0
    )
    np.testing.assert_array_equal(png_pixels(first), png_pixels(again))


def test_web_ui_png_with_a_sampler_sdrun_lacks(tiny_onnx_dir: Path, tmp_path: Path) -> None:
    png = tmp_path / "webui.png"
    text = "a cat\nSteps: 3, Sampler: DPM fast, Schedule type: Karras, CFG scale: 7, Seed: 1, Size: 64x64"
    from PIL import PngImagePlugin

    info = PngImagePlugin.PngInfo()
    info.add_text("parameters", text)
    Image.new("RGB", (64, 64)).save(png, pnginfo=info)
    assert_one_line_error(run_cli("--from-png", png, "--model", tiny_onnx_dir), "unknown sampler 'DPM fast'")
    info = PngImagePlugin.PngInfo()
    info.add_text("parameters", text.replace("DPM fast, Schedule type: Karras", "Euler, Schedule type: Beta"))
    Image.new("RGB", (64, 64)).save(png, pnginfo=info)
    refused = run_cli("--from-png", png, "--model", tiny_onnx_dir)
    assert_one_line_error(refused, "unknown schedule type 'Beta'")
    out = tmp_path / "cat.png"
    result = run_cli("--from-png", png, "--model", tiny_onnx_dir, "--sampler", "euler", "--out", out)
    assert result.exit_code == 0, result.output
    assert parse_parameters(png_parameters(out)).sampler == "euler"


@pytest.mark.parametrize(
    "pattern, names",
    [
        ("{seed}-{i}.png", ["5-0.png", "6-1.png"]),
        ("img{i:02d}.png", ["img00.png", "img01.png"]),
        ("many.png", ["many-0.png", "many-1.png"]),
    ],
)
def test_out_patterns_for_several_images(
    tiny_onnx_dir: Path, tmp_path: Path, pattern: str, names: list
) -> None:
    result = run_cli(
        "a cube",
        "--model",
        tiny_onnx_dir,
        "--num-images",
        "2",
        "--out",
        tmp_path / "sub" / pattern,
        "--quiet",
        *FAST,
    )
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in (tmp_path / "sub").iterdir()) == names
    assert [parse_parameters(png_parameters(tmp_path / "sub" / n)).seed for n in names] == [5, 6]


def test_missing_default_model_says_to_build_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert_one_line_error(run_cli("a cube"), "run `sdexport build` first")


def _write_manifest(folder: Path) -> None:
    files = {
        p.relative_to(folder).as_posix(): {
            "size": p.stat().st_size,
            "sha256": hashlib.sha256(p.read_bytes()).hexdigest(),
        }
        for p in folder.rglob("*")
        if p.is_file()
    }
    (folder / "sdexport_manifest.json").write_text(json.dumps({"files": files}))


def test_missing_component_error(folder_copy: Path) -> None:
    (folder_copy / "vae_decoder" / "model.onnx").unlink()
    assert_one_line_error(run_cli("a cube", "--model", folder_copy), "has no vae_decoder")


def test_checksum_failure_error(folder_copy: Path) -> None:
    _write_manifest(folder_copy)
    graph = folder_copy / "unet" / "model.onnx"
    data = bytearray(graph.read_bytes())
    data[100] ^= 0x01
    graph.write_bytes(bytes(data))
    assert_one_line_error(
        run_cli("a cube", "--model", folder_copy), "unet/model.onnx fails its SHA-256 check"
    )


@pytest.mark.parametrize(
    "args, message",
    [
        (["--init-image", "missing.png"], "cannot read init image missing.png"),
        (["--init-image", "{init}", "--strength", "1.5"], "strength 1.5 is out of range"),
        (["--strength", "0.5"], "strength applies to image-to-image only: give an init image too"),
        (["--height", "100"], "height 100 is not a positive multiple of 16"),
        (["--width", "4096", "--height", "8"], "height 8 is not a positive multiple of 16"),
        (["--sampler", "heun"], "Invalid value for '--sampler'"),
        (["--provider", "gpu"], "Invalid value for '--provider'"),
        (["--low-memory", "--fast"], "--low-memory and --fast pull opposite ways: choose one"),
    ],
)
def test_bad_input_is_one_line(tiny_onnx_dir: Path, tmp_path: Path, args: list, message: str) -> None:
    init = tmp_path / "init.png"
    Image.new("RGB", (64, 64)).save(init)
    args = [arg.replace("{init}", str(init)) for arg in args]
    assert_one_line_error(run_cli("a cube", "--model", tiny_onnx_dir, "--steps", "2", *args), message)


@pytest.mark.parametrize("pattern", ["{name}.png", "{}.png", "{i.png"])
def test_bad_out_pattern_fails_before_sampling(tiny_onnx_dir: Path, pattern: str) -> None:
    result = run_cli("a cube", "--model", tiny_onnx_dir, "--out", pattern)
    assert_one_line_error(result, "may use only {i} and {seed}")
    assert "Sampling" not in result.stderr


def test_no_prompt_is_one_line(tiny_onnx_dir: Path) -> None:
    assert_one_line_error(run_cli("--model", tiny_onnx_dir), "give a prompt")


# Runs the CLI with an import hook that refuses torch and the packages that pull it in; it first proves
# that the hook works, so the test cannot pass by accident.
_WITHOUT_TORCH = """
import importlib.abc, sys
BLOCKED = {"torch", "sdexport", "diffusers", "transformers", "optimum", "accelerate"}
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in BLOCKED:
            raise ImportError(f"{name} is blocked in this test")
sys.meta_path.insert(0, Block())
try:
    import torch
except ImportError:
    pass
else:
    sys.exit("the import block did not work")
from sdrun.cli import main
main(prog_name="sdrun")
"""


def test_cli_runs_where_torch_cannot_be_imported(tiny_onnx_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "no-torch.png"
    command = [
        sys.executable,
        "-c",
        _WITHOUT_TORCH,
        "a cube",
        "--model",
        str(tiny_onnx_dir),
        "--out",
        str(out),
        "--steps",
        "2",
        "--seed",
        "1",
    ]
    done = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout == f"Wrote {out}\n"
    with Image.open(out) as image:
        assert image.size == (64, 64) and "Seed: 1" in image.text["parameters"]


def test_fast_mode_makes_the_same_image(tiny_onnx_dir: Path, tmp_path: Path) -> None:
    default, fast = tmp_path / "default.png", tmp_path / "fast.png"
    assert run_cli("a cube", "--model", tiny_onnx_dir, *FAST, "--out", default).exit_code == 0
    result = run_cli("a cube", "--model", tiny_onnx_dir, *FAST, "--fast", "--out", fast)
    assert result.exit_code == 0, result.output
    np.testing.assert_array_equal(png_pixels(fast), png_pixels(default))


def test_negative_prompt_at_guidance_one_is_reported(tiny_sdexport_dir: Path, tmp_path: Path) -> None:
    args = ["a cube", "--model", tiny_sdexport_dir, "--guidance", "1", *FAST]
    ignored = run_cli(*args, "--negative", "dark", "--out", tmp_path / "n.png")
    assert ignored.exit_code == 0, ignored.output
    assert "Warning: the negative prompt is ignored at guidance 1" in ignored.stderr
    plain = run_cli(*args, "--out", tmp_path / "p.png")
    assert plain.exit_code == 0 and "Warning" not in plain.stderr
    assert (png_pixels(tmp_path / "n.png") == png_pixels(tmp_path / "p.png")).all()
