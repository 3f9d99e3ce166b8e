"""The hires fix's latent upscalers against torch.nn.functional.interpolate, which the web UI calls with the
mode and antialias of each (shared.latent_upscale_modes), and its pixel upscalers against PIL run as
modules/upscaler.py runs it."""

import numpy as np
import pytest
import torch
from PIL import Image

from sdrun import a1111
from sdrun.hires import hires_target, resize_latents, second_pass_schedule, upscale_picture
from sdrun.samplers import first_step

# (input height, width) -> (output height, width): integer and non-integer scales, up and down, odd sizes.
SIZES = [
    ((8, 8), (16, 16)),
    ((8, 12), (12, 18)),
    ((7, 5), (13, 11)),
    ((8, 8), (10, 20)),
    ((16, 12), (8, 9)),
    ((5, 9), (15, 27)),
    ((64, 48), (96, 72)),
]


def _torch(latents: np.ndarray, size: tuple[int, int], upscaler: str) -> np.ndarray:
    mode, antialias = a1111.LATENT_UPSCALERS[upscaler]
    resized = torch.nn.functional.interpolate(
        torch.from_numpy(latents), size=size, mode=mode, antialias=antialias
    )
    return resized.numpy()


@pytest.mark.parametrize("upscaler", list(a1111.LATENT_UPSCALERS))
@pytest.mark.parametrize("source, size", SIZES)
def test_latent_upscalers_match_torch(upscaler: str, source: tuple[int, int], size: tuple[int, int]) -> None:
    latents = np.random.default_rng(sum(source)).standard_normal((2, 4, *source), dtype=np.float32)
    ours = resize_latents(latents, *size, upscaler)
    assert ours.dtype == np.float32 and ours.shape == (2, 4, *size)
    np.testing.assert_allclose(ours, _torch(latents, size, upscaler), rtol=1e-5, atol=2e-6)


@pytest.mark.parametrize("upscaler", list(a1111.LATENT_UPSCALERS))
def test_each_mode_differs_from_the_others(upscaler: str) -> None:
    """The power of the match above: every other mode is far from this one's torch result (shrinking one
    side: when enlarging, antialiased bilinear is plain bilinear)."""
    latents = np.random.default_rng(0).standard_normal((1, 4, 7, 5), dtype=np.float32)
    expected = _torch(latents, (5, 11), upscaler)
    for other in a1111.LATENT_UPSCALERS:
        if other != upscaler:
            assert np.abs(resize_latents(latents, 5, 11, other) - expected).max() > 1e-2, other


def _a1111_upscale(image: Image.Image, width: int, height: int, upscaler: str) -> Image.Image:
    """modules/images.py resize_image(0, ...) with modules/upscaler.py's Upscaler.upscale, written out as
    the web UI's code runs for the built-in upscalers."""
    filters = {"Lanczos": Image.Resampling.LANCZOS, "Nearest": Image.Resampling.NEAREST}
    if upscaler == "None":
        return image.resize((width, height), resample=Image.Resampling.LANCZOS)
    scale = max(width / image.width, height / image.height)
    if scale > 1.0:
        dest_w, dest_h = int((image.width * scale) // 8 * 8), int((image.height * scale) // 8 * 8)
        for _ in range(3):
            shape = image.size
            scaled = (int(image.width * scale), int(image.height * scale))
            image = image.resize(scaled, resample=filters[upscaler])
            if shape == image.size or (image.width >= dest_w and image.height >= dest_h):
                break
        if image.size != (dest_w, dest_h):
            image = image.resize((dest_w, dest_h), resample=Image.Resampling.LANCZOS)
    if image.size != (width, height):
        image = image.resize((width, height), resample=Image.Resampling.LANCZOS)
    return image


@pytest.mark.parametrize("upscaler", a1111.PIXEL_UPSCALERS)
@pytest.mark.parametrize("size, target", [((64, 48), (128, 96)), ((40, 24), (100, 60)), ((64, 64), (96, 96))])
def test_pixel_upscalers_resize_as_the_web_ui(upscaler: str, size: tuple, target: tuple) -> None:
    picture = Image.fromarray(np.random.default_rng(1).integers(0, 256, (*size[::-1], 3), dtype=np.uint8))
    ours = upscale_picture(picture, *target, upscaler)
    assert ours.size == target
    assert np.array_equal(np.asarray(ours), np.asarray(_a1111_upscale(picture, *target, upscaler)))


def test_pixel_upscalers_differ() -> None:
    picture = Image.fromarray(np.random.default_rng(1).integers(0, 256, (24, 40, 3), dtype=np.uint8))
    made = {name: np.asarray(upscale_picture(picture, 100, 60, name)) for name in a1111.PIXEL_UPSCALERS}
    assert not np.array_equal(made["Nearest"], made["Lanczos"])
    assert not np.array_equal(made["Nearest"], made["None"])


@pytest.mark.parametrize(
    "first, scale, resize, upscale_to, truncate",
    [
        # The web UI's calculate_target_resolution, worked by hand from its source.
        ((512, 512), 2.0, None, (1024, 1024), (0, 0)),
        ((512, 768), 1.5, None, (768, 1152), (0, 0)),
        ((512, 512), 1.3, None, (665, 665), (0, 0)),
        ((512, 768), 2.0, (1024, 0), (1024, 1536), (0, 0)),
        ((512, 768), 2.0, (0, 1024), (682, 1024), (0, 0)),
        ((512, 512), 2.0, (1024, 768), (1024, 1024), (0, 32)),
        ((512, 768), 2.0, (1024, 1024), (1024, 1536), (0, 64)),
    ],
)
def test_target_follows_the_web_ui(first, scale, resize, upscale_to, truncate) -> None:
    target = hires_target(*first, scale, resize, 8)
    assert target.upscale_to == upscale_to and target.truncate == truncate
    if resize is not None and 0 not in resize:
        assert target.size(8) == resize


@pytest.mark.parametrize(
    "steps, strength, schedule_steps", [(10, 0.7, 14), (20, 0.5, 40), (8, 1.0, 8), (3, 0.3, 10)]
)
@pytest.mark.parametrize("sampler", ["euler", "ddim", "k_euler", "k_dpmpp_2m"])
def test_second_pass_runs_its_steps_of_a_longer_schedule(
    steps: int, strength: float, schedule_steps: int, sampler: str
) -> None:
    """sd_samplers_common.setup_img2img_steps with the steps given: int(steps / min(strength, 0.999)) in
    all, of which the last `steps` run, whichever count of img2img steps the sampler has (first_step)."""
    total, run_strength = second_pass_schedule(steps, strength, sampler)
    assert total == schedule_steps
    assert total - first_step(total, run_strength, sampler) == steps


def test_samplers_whose_strength_sets_their_timesteps_keep_both() -> None:
    """LCM runs all its steps lower in the schedule: the hires steps and strength as given."""
    assert second_pass_schedule(4, 0.5, "lcm") == (4, 0.5)
