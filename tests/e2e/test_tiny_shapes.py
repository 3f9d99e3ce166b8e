"""What the embedded model's pictures show, read from their pixels, through the exported ONNX folder."""

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from conftest import HELD_OUT_SET
from PIL import Image

from sdexport.tiny.shapes import IMAGE_SIZE, Scene, draw, judge
from sdrun.defaults import GenerationDefaults
from sdrun.pipeline import Pipeline

BAR = 0.9
TEACHER_BAR = 0.95
# The step count each sampler is usually run at (the default, dpmpp_2m_karras at 20, is tested above).
SAMPLER_STEPS = {"euler": 20, "euler_a": 20, "dpmpp_2m": 20, "ddim": 50, "ddpm": 50}


@pytest.fixture(scope="module")
def default_adherence(tiny_pipeline: Pipeline, adherence: Callable[..., float]) -> float:
    return adherence(tiny_pipeline)


def test_the_default_settings_follow_the_prompt(
    tiny_pipeline: Pipeline, default_adherence: float, adherence: Callable[..., float]
) -> None:
    # The defaults are the ones the model's config file ships (SD's guidance 7.5 over-saturates a model
    # this small: euler_a at 7.5 drew 20% of the set right).
    expected = GenerationDefaults(sampler="dpmpp_2m_karras", steps=20, guidance_scale=4.0)
    assert tiny_pipeline.defaults == expected
    assert default_adherence >= BAR
    # Over both sets, 120 captions and seeds (the held-out one never looked at in tuning): 0.958 measured.
    held_out = adherence(tiny_pipeline, HELD_OUT_SET)
    assert (default_adherence + held_out) / 2 >= TEACHER_BAR


def test_guidance_helps_and_its_flipped_sign_hurts(
    tiny_pipeline: Pipeline, default_adherence: float, adherence: Callable[..., float],
) -> None:
    default_scale = tiny_pipeline.defaults.guidance_scale
    assert default_adherence >= adherence(tiny_pipeline, guidance_scale=1.0)
    # eps_u - s (eps_c - eps_u) steers away from the prompt: a sign error in guidance would pass the
    # default-settings test only by luck, and fail here.
    assert adherence(tiny_pipeline, guidance_scale=-default_scale) <= default_adherence - 0.3


@pytest.mark.parametrize("sampler", SAMPLER_STEPS)
def test_each_sampler_reaches_the_bar_at_its_usual_steps(
    tiny_pipeline: Pipeline, sampler: str, adherence: Callable[..., float]
) -> None:
    assert adherence(tiny_pipeline, sampler=sampler, steps=SAMPLER_STEPS[sampler]) >= BAR


def test_int8_export_keeps_adherence(
    tiny_int8_folder: Path, default_adherence: float, adherence: Callable[..., float]
) -> None:
    int8 = adherence(Pipeline.load(tiny_int8_folder, provider="cpu"))
    assert int8 >= default_adherence - 0.05


def test_same_seed_same_pixels_other_seed_other_pixels(
    tiny_pipeline: Pipeline,
) -> None:
    def pixels(seed: int) -> np.ndarray:
        image = tiny_pipeline.generate("a small green square on a white background", seed=seed,
                                       height=IMAGE_SIZE, width=IMAGE_SIZE).images[0]
        return np.asarray(image)

    first = pixels(7)
    assert np.array_equal(first, pixels(7))
    assert np.abs(first.astype(int) - pixels(8).astype(int)).mean() > 2.0


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_img2img_repaints_at_high_strength_and_keeps_the_picture_at_low(
    tiny_pipeline: Pipeline, seed: int
) -> None:
    red = Scene("large", "red", "circle", "white")
    picture = draw(red, np.random.default_rng(seed))
    blue = Scene("large", "blue", "circle", "white")

    def redraw(strength: float) -> np.ndarray:
        result = tiny_pipeline.generate(blue.caption, seed=seed, init_image=Image.fromarray(picture),
                                        strength=strength)
        return np.asarray(result.images[0])

    repainted, kept = redraw(0.8), redraw(0.2)
    assert judge(repainted).matches(blue)
    # At 0.2 the shape stays where it was, with its outline, size and background; its colour is what
    # moves towards the prompt's (to a dark or green mix: this model's captions fix the colour so
    # firmly that its guided predictions override it even at low noise; see issue 5's notes).
    judged = judge(kept)
    assert (judged.shape, judged.size, judged.background) == (red.shape, red.size, red.background)
    assert _overlap(_shape_mask(kept), _shape_mask(picture)) >= 0.8

    def change(image: np.ndarray) -> float:
        return float(np.abs(image.astype(int) - picture.astype(int)).mean())

    assert change(kept) < change(repainted)


def _shape_mask(image: np.ndarray) -> np.ndarray:
    """Pixels far from the background (the median of the two top and bottom rows)."""
    pixels = image.astype(float)
    background = np.median(np.concatenate([pixels[:2].reshape(-1, 3), pixels[-2:].reshape(-1, 3)]), axis=0)
    return np.linalg.norm(pixels - background, axis=-1) > 60.0


def _overlap(a: np.ndarray, b: np.ndarray) -> float:
    """Intersection over union."""
    return float((a & b).sum() / (a | b).sum())
