"""The hires fix from the command line: --hires-* options give the library's two-pass image at the hires
size, its PNG records the fix as the web UI does, --from-png makes it again, and refusals are one line."""

from pathlib import Path

import numpy as np
from cli_runs import assert_one_line_error, png_parameters, png_pixels, run_cli

from sdrun.infotext import parse_parameters
from sdrun.pipeline import Pipeline
from sdrun.settings import HiresFix

FAST = ["--steps", "2", "--seed", "5", "--sampler", "euler"]


def test_hires_options_make_the_two_pass_image(tiny_sdexport_dir: Path, tmp_path: Path) -> None:
    out, again = tmp_path / "hires.png", tmp_path / "again.png"
    options = ["--hires-scale", "1.5", "--hires-steps", "2", "--hires-upscaler", "Latent (bicubic)"]
    result = run_cli("a cube", "--model", tiny_sdexport_dir, "--out", out, *FAST, *options)
    assert result.exit_code == 0, result.output
    pixels = png_pixels(out)
    assert pixels.shape == (96, 96, 3)
    hires = HiresFix(scale=1.5, steps=2, upscaler="Latent (bicubic)")
    library = Pipeline.load(tiny_sdexport_dir, provider="cpu")
    expected = library.generate("a cube", seed=5, steps=2, sampler="euler", hires=hires).images[0]
    np.testing.assert_array_equal(pixels, np.asarray(expected))
    text = png_parameters(out)
    assert "Size: 64x64, " in text
    assert "Hires upscale: 1.5, Hires steps: 2, Hires upscaler: Latent (bicubic)" in text
    assert parse_parameters(text).hires == HiresFix(
        scale=1.5, steps=2, upscaler="Latent (bicubic)", sampler="euler"
    )

    assert run_cli("--from-png", out, "--model", tiny_sdexport_dir, "--out", again).exit_code == 0
    np.testing.assert_array_equal(png_pixels(again), pixels)


def test_hires_refusals_are_one_line(tiny_sdexport_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "no.png"
    base = ["a cube", "--model", tiny_sdexport_dir, "--out", out, *FAST]
    upscaler = run_cli(*base, "--hires-upscaler", "ESRGAN_4x")
    assert_one_line_error(upscaler, "unknown hires upscaler 'ESRGAN_4x': sdrun has Latent, ")
    size = run_cli(*base, "--hires-resize", "4096x4096")
    assert_one_line_error(size, "above the limit")
    assert not out.exists()
