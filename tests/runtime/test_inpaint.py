"""Inpainting as a person uses it, on the tiny models (an inpainting UNet of 9 input channels, and a plain
one that keeps the init image's latents outside the mask): the init image's pixels come back unchanged
outside the mask, masks are read as AUTOMATIC1111 reads them, bad masks are one-line errors with nothing
written, and an inpainted PNG is made again from its settings and the same mask.

(That the sampler follows diffusers' StableDiffusionInpaintPipeline step by step: test_inpaint_parity.py.)
"""

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from cli_runs import assert_one_line_error, png_parameters, png_pixels, run_cli
from inpaint_models import box_mask, init_picture
from PIL import Image, ImageFilter

from sdrun.errors import SettingsError
from sdrun.inpaint import MAX_MASK_BLUR
from sdrun.limits import Limits
from sdrun.pipeline import Pipeline

SIZE = 64  # the tiny models' own size
STEPS = 2
SEED = 7
PROMPT = "a red cube"
# A Gaussian blur of radius r (PIL's, as the mask blur is) reaches under 3r pixels.
BLUR_REACH = 3


@pytest.fixture(scope="module")
def plain(tiny_sdexport_dir: Path) -> Pipeline:
    return Pipeline.load(tiny_sdexport_dir, provider="cpu")


@pytest.fixture(scope="module")
def inpainting(inpainting_sdexport_dir: Path) -> Pipeline:
    pipeline = Pipeline.load(inpainting_sdexport_dir, provider="cpu")
    assert pipeline.facts.inpainting
    return pipeline


@pytest.fixture(params=["inpainting", "plain"])
def pipeline(request: pytest.FixtureRequest) -> Pipeline:
    """Each kind of UNet."""
    return request.getfixturevalue(request.param)


@pytest.fixture
def files(tmp_path: Path) -> Path:
    """A folder with the init picture (init.png) and a box mask (mask.png) at the tiny models' size, and a
    file that is no picture (mask.txt)."""
    init_picture(SIZE).save(tmp_path / "init.png")
    box_mask(SIZE).save(tmp_path / "mask.png")
    (tmp_path / "mask.txt").write_text("white where it repaints\n")
    return tmp_path


def inpaint(
    pipeline: Pipeline, mask: Image.Image | Path, mask_blur: int = 0, overlay: bool = True
) -> np.ndarray:
    result = pipeline.generate(
        PROMPT,
        steps=STEPS,
        seed=SEED,
        init_image=init_picture(SIZE),
        mask=mask,
        mask_blur=mask_blur,
        overlay=overlay,
    )
    return np.asarray(result.images[0])


def beyond(mask: Image.Image, distance: int) -> np.ndarray:
    """True where a pixel is more than `distance` pixels away (across or diagonally) from every white one."""
    return np.asarray(mask.filter(ImageFilter.MaxFilter(2 * distance + 1))) == 0


def test_overlay_keeps_the_init_image_where_the_mask_is_black(pipeline: Pipeline) -> None:
    """Without the overlay the VAE's round trip changes those pixels too; inside the mask the picture is
    the one decoded."""
    mask = box_mask(SIZE)
    init = np.asarray(init_picture(SIZE))
    black = np.asarray(mask) == 0
    overlaid = inpaint(pipeline, mask)
    decoded = inpaint(pipeline, mask, overlay=False)
    np.testing.assert_array_equal(overlaid[black], init[black])
    np.testing.assert_array_equal(overlaid[~black], decoded[~black])
    assert (decoded[black] != init[black]).any()


def test_blurred_overlay_keeps_the_init_image_beyond_the_blur(pipeline: Pipeline) -> None:
    """Within the blur's reach outside the mask, the picture is blended into the init image."""
    blur = 3
    mask = box_mask(SIZE)
    init = np.asarray(init_picture(SIZE))
    far = beyond(mask, BLUR_REACH * blur)
    near = beyond(mask, 0) & ~far
    overlaid = inpaint(pipeline, mask, mask_blur=blur)
    np.testing.assert_array_equal(overlaid[far], init[far])
    assert (overlaid[near] != init[near]).any()
    assert (inpaint(pipeline, mask, mask_blur=blur, overlay=False)[far] != init[far]).any()


def _smaller() -> tuple[Image.Image, Image.Image]:
    small = box_mask(SIZE * 3 // 8)
    return small, small.resize((SIZE, SIZE), resample=Image.Resampling.LANCZOS)


def _alpha() -> tuple[Image.Image, Image.Image]:
    """Its colours say the opposite of its alpha channel."""
    mask = box_mask(SIZE)
    rgba = Image.merge("RGBA", [Image.eval(mask, lambda level: 255 - level)] * 3 + [mask])
    return rgba, mask


def _opaque() -> tuple[Image.Image, Image.Image]:
    mask = box_mask(SIZE)
    return Image.merge("RGBA", [mask] * 3 + [Image.new("L", mask.size, 255)]), mask


def _colour() -> tuple[Image.Image, Image.Image]:
    """Yellow (luminance 198) in the box, dark red (luminance 81, red 200) in a stripe across it."""
    colour = Image.new("RGB", (SIZE, SIZE))
    colour.paste((255, 200, 40), mask=box_mask(SIZE))
    colour.paste((200, 30, 30), (0, SIZE // 2, SIZE, SIZE // 2 + 8))
    return colour, colour.convert("L")


# (case, () -> (a mask as given, the gray mask at the output size that it must act as))
MASK_READINGS = [
    ("smaller: resized with Lanczos", _smaller),
    ("RGBA: its alpha channel", _alpha),
    ("opaque RGBA: its luminance", _opaque),
    ("RGB: its luminance", _colour),
]


@pytest.mark.parametrize(("case", "given"), MASK_READINGS, ids=[case for case, _ in MASK_READINGS])
def test_a_mask_is_read_as_the_web_ui_reads_it(
    case: str, given: Callable[[], tuple[Image.Image, Image.Image]], plain: Pipeline, tmp_path: Path
) -> None:
    mask, meant = given()
    mask.save(tmp_path / "mask.png")
    np.testing.assert_array_equal(inpaint(plain, tmp_path / "mask.png"), inpaint(plain, meant))


def _truncated(work: Path) -> dict:
    data = (work / "mask.png").read_bytes()
    (work / "cut.png").write_bytes(data[: len(data) // 2])
    return {"mask": work / "cut.png"}


# (case, generate's arguments (a callable of the folder of `files`), what the error must say)
LIBRARY_REFUSALS = [
    ("not an image", lambda work: {"mask": work / "mask.txt"}, "cannot read mask .*: it is not a PNG"),
    ("missing", lambda work: {"mask": work / "missing.png"}, "cannot read mask .*: .*No such file"),
    ("truncated", _truncated, "cannot read mask .*: image file is truncated"),
    ("no init image", lambda work: {"init_image": None}, "give the init image too"),
    ("negative blur", lambda work: {"mask_blur": -1}, "mask blur must be a whole number >= 0"),
    ("blur above the top", lambda work: {"mask_blur": MAX_MASK_BLUR + 1}, "mask blur 65 is out of range"),
    ("fractional blur", lambda work: {"mask_blur": 2.5}, "mask blur must be a whole number"),
]


@pytest.mark.parametrize(
    ("case", "arguments", "message"), LIBRARY_REFUSALS, ids=[c[0] for c in LIBRARY_REFUSALS]
)
def test_bad_mask_is_a_one_line_settings_error(
    case: str, arguments: Callable[[Path], dict], message: str, plain: Pipeline, files: Path
) -> None:
    given = {"init_image": files / "init.png", "mask": files / "mask.png", **arguments(files)}
    with pytest.raises(SettingsError, match=message) as refused:
        plain.generate(PROMPT, steps=STEPS, **given)
    assert "\n" not in str(refused.value)


def test_mask_above_the_pixel_limit_is_refused_before_decoding(tiny_sdexport_dir: Path, files: Path) -> None:
    """The init image at the limit passes; the mask, one pixel row over it, does not."""
    limited = Pipeline.load(tiny_sdexport_dir, provider="cpu", limits=Limits(max_init_pixels=SIZE * SIZE))
    box_mask(SIZE).resize((SIZE, SIZE + 1)).save(files / "tall.png")
    with pytest.raises(SettingsError, match=r"the mask is 64x65 \(4,160 pixels\), above the limit of 4,096"):
        limited.prepare(PROMPT, init_image=files / "init.png", mask=files / "tall.png")
    limited.prepare(PROMPT, init_image=files / "init.png", mask=files / "mask.png")


# (case, options after the prompt and model (files of the `files` folder in braces), what the error says)
CLI_REFUSALS = [
    ("not an image", ["--init-image", "{init.png}", "--mask", "{mask.txt}"], "cannot read mask"),
    ("missing", ["--init-image", "{init.png}", "--mask", "{missing.png}"], "cannot read mask"),
    (
        "--mask without --init-image",
        ["--mask", "{mask.png}"],
        "a mask marks what to repaint in an init image",
    ),
    (
        "--mask-blur without --mask",
        ["--init-image", "{init.png}", "--mask-blur", "4"],
        "a mask blur applies to inpainting only",
    ),
    (
        "negative --mask-blur",
        ["--init-image", "{init.png}", "--mask", "{mask.png}", "--mask-blur=-1"],
        "Invalid value for '--mask-blur'",
    ),
    (
        "--mask-blur above the top",
        ["--init-image", "{init.png}", "--mask", "{mask.png}", "--mask-blur", "65"],
        "Invalid value for '--mask-blur'",
    ),
]


@pytest.mark.parametrize(("case", "options", "message"), CLI_REFUSALS, ids=[c[0] for c in CLI_REFUSALS])
def test_bad_mask_option_is_one_line_and_writes_nothing(
    case: str, options: list[str], message: str, tiny_sdexport_dir: Path, files: Path
) -> None:
    out = files / "out.png"
    options = [files / option.strip("{}") if option.startswith("{") else option for option in options]
    result = run_cli(PROMPT, "--model", tiny_sdexport_dir, "--steps", STEPS, "--out", out, *options)
    assert_one_line_error(result, message)
    assert not out.exists()


@pytest.mark.parametrize("overlay", ["--overlay", "--no-overlay"])
def test_inpainted_png_is_made_again_from_its_settings_and_mask(
    inpainting_sdexport_dir: Path, files: Path, overlay: str
) -> None:
    inputs = ["--model", inpainting_sdexport_dir, "--init-image", files / "init.png"]
    first, again, refused = files / "first.png", files / "again.png", files / "refused.png"
    made = run_cli(
        PROMPT,
        *inputs,
        "--mask",
        files / "mask.png",
        "--mask-blur",
        "7",
        overlay,
        "--strength",
        "0.6",
        "--steps",
        STEPS,
        "--out",
        first,
    )
    assert made.exit_code == 0, made.output
    parameters = png_parameters(first)
    assert "Mask blur: 7" in parameters and "Denoising strength: 0.6" in parameters
    assert ("Mask overlay: off" in parameters) == (overlay == "--no-overlay")
    assert_one_line_error(
        run_cli("--from-png", first, *inputs, "--out", refused), "pass that mask with --mask"
    )
    assert not refused.exists()
    remade = run_cli("--from-png", first, *inputs, "--mask", files / "mask.png", "--out", again)
    assert remade.exit_code == 0, remade.output
    np.testing.assert_array_equal(png_pixels(again), png_pixels(first))
