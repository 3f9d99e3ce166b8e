"""The hires fix end to end on the tiny random-weight model, against an independent two-pass reference:
diffusers' StableDiffusionPipeline for the first pass (from the image's first numpy draw, sdrun.draws), the
web UI's upscaling written with torch (interpolate for the latent upscalers; decode, PIL and encode for the
pixel ones), and diffusers' StableDiffusionImg2ImgPipeline for the second pass, given the noise of a fresh
draw for the image's seed at the new size and the web UI's step count for the second pass
(sd_samplers_common.setup_img2img_steps: the hires steps run, the last of int(steps / strength))."""

from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import (
    DDIMScheduler,
    EulerDiscreteScheduler,
    StableDiffusionImg2ImgPipeline,
    StableDiffusionPipeline,
)
from diffusers.pipelines.stable_diffusion import pipeline_stable_diffusion_img2img
from PIL import Image

from sdrun import a1111
from sdrun.errors import SettingsError
from sdrun.limits import Limits
from sdrun.pipeline import Pipeline
from sdrun.settings import HiresFix

PROMPT, NEGATIVE, GUIDANCE, STEPS, SEED = "a red cube on a table", "blurry", 7.5, 4, 11
LATENT_RTOL = 1e-5
# A pixel upscaler's picture is 8-bit: where ONNX's and torch's decodes straddle a level, one pixel moves by
# 1/255 before the encoder (measured: 6e-5 with Lanczos); the swaps below move the latents by over 1e-3.
PIXEL_RTOL = 2e-4
SCHEDULERS = {"euler": EulerDiscreteScheduler, "ddim": DDIMScheduler}


@pytest.fixture(scope="module")
def reference(tiny_diffusers_dir: Path) -> StableDiffusionPipeline:
    return StableDiffusionPipeline.from_pretrained(tiny_diffusers_dir).to(torch.float32)


@pytest.fixture(scope="module")
def pipeline(tiny_sdexport_dir: Path) -> Pipeline:
    return Pipeline.load(tiny_sdexport_dir, provider="cpu")


def _draw(shape: tuple[int, ...]) -> torch.Tensor:
    """The first draw of the image's generator (sdrun's documented draws, sdrun.draws)."""
    return torch.from_numpy(np.random.default_rng(SEED).standard_normal(shape, dtype=np.float32))


def _components(reference: StableDiffusionPipeline, sampler: str) -> dict:
    scheduler = SCHEDULERS[sampler].from_config(reference.scheduler.config)
    return {**reference.components, "scheduler": scheduler}


def _upscaled(reference: StableDiffusionPipeline, latents: torch.Tensor, size: int, upscaler: str):
    """The web UI's sample_hr_pass upscaling, in torch and PIL."""
    if upscaler in a1111.LATENT_UPSCALERS:
        mode, antialias = a1111.LATENT_UPSCALERS[upscaler]
        latent_size = (size // 8, size // 8)
        return torch.nn.functional.interpolate(latents, size=latent_size, mode=mode, antialias=antialias)
    scaling = reference.vae.config.scaling_factor
    with torch.no_grad():
        decoded = reference.vae.decode(latents / scaling).sample
    array = torch.clamp((decoded[0] + 1.0) / 2.0, 0.0, 1.0).numpy()
    picture = Image.fromarray((255.0 * np.moveaxis(array, 0, 2)).astype(np.uint8))
    # "Lanczos" at a whole scale: one Lanczos resize (modules/upscaler.py).
    picture = picture.resize((size, size), resample=Image.Resampling.LANCZOS)
    pixels = torch.from_numpy(np.asarray(picture, dtype=np.float32) / 255.0).permute(2, 0, 1)[None] * 2 - 1
    with torch.no_grad():
        return reference.vae.encode(pixels).latent_dist.mean * scaling


def _two_passes(reference, monkeypatch, sampler, upscaler, scale, steps, strength) -> np.ndarray:
    first = StableDiffusionPipeline(**_components(reference, sampler))(
        PROMPT,
        negative_prompt=NEGATIVE,
        num_inference_steps=STEPS,
        guidance_scale=GUIDANCE,
        height=64,
        width=64,
        latents=_draw((1, 4, 8, 8)),
        output_type="latent",
    ).images
    size = int(64 * scale)
    upscaled = _upscaled(reference, first, size, upscaler)
    noise = _draw((1, 4, size // 8, size // 8))
    # The second pass's noise is sdrun's draw (diffusers draws it from torch inside prepare_latents).
    monkeypatch.setattr(pipeline_stable_diffusion_img2img, "randn_tensor", lambda *_, **__: noise.clone())
    schedule = int(steps / min(strength, 0.999))
    assert int(schedule * (steps / schedule)) == steps  # diffusers runs the hires steps of that schedule
    return StableDiffusionImg2ImgPipeline(**_components(reference, sampler))(
        PROMPT,
        image=upscaled,
        strength=steps / schedule,
        negative_prompt=NEGATIVE,
        num_inference_steps=schedule,
        guidance_scale=GUIDANCE,
        output_type="latent",
    ).images.numpy()


def _sdrun(pipeline: Pipeline, sampler: str, hires: HiresFix) -> tuple[np.ndarray, Image.Image, list]:
    steps: list[tuple[int, int, np.ndarray]] = []
    result = pipeline.generate(
        PROMPT,
        negative_prompt=NEGATIVE,
        seed=SEED,
        steps=STEPS,
        guidance_scale=GUIDANCE,
        sampler=sampler,
        hires=hires,
        callback=lambda step, total, latents: steps.append((step, total, latents)) and None,
    )
    return steps[-1][2], result.images[0], steps


def _relative_l2(ours: np.ndarray, theirs: np.ndarray) -> float:
    return float(np.linalg.norm(ours - theirs) / np.linalg.norm(theirs))


@pytest.mark.parametrize(
    "sampler, upscaler, scale, steps, strength",
    [
        ("euler", "Latent", 2.0, 3, 0.7),
        pytest.param("ddim", "Latent (bicubic antialiased)", 1.5, 4, 0.5, marks=pytest.mark.slow),
        ("euler", "Latent (nearest-exact)", 2.0, 2, 0.5),
        ("euler", "Lanczos", 2.0, 3, 0.7),
    ],
)
def test_two_passes_match_diffusers(
    reference, pipeline, monkeypatch, sampler, upscaler, scale, steps, strength
) -> None:
    hires = HiresFix(scale=scale, upscaler=upscaler, steps=steps, strength=strength)
    ours, image, reported = _sdrun(pipeline, sampler, hires)
    theirs = _two_passes(reference, monkeypatch, sampler, upscaler, scale, steps, strength)
    assert _relative_l2(ours, theirs) < (LATENT_RTOL if upscaler.startswith("Latent") else PIXEL_RTOL)
    assert image.size == (int(64 * scale),) * 2
    # The callback counts both passes: the first's steps, then the hires steps.
    total = STEPS + steps
    assert [(step, total) for step, total, _ in reported] == [(i, total) for i in range(total)]

    # Power: another upscale mode (at 2x, nearest and nearest-exact pick the same pixels) or another
    # strength is far from sdrun's result.
    other = "Latent" if "nearest" in upscaler else "Latent (nearest)"
    for swapped, swapped_strength in ((other, strength), (upscaler, 0.9)):
        again = _two_passes(reference, monkeypatch, sampler, swapped, scale, steps, swapped_strength)
        assert _relative_l2(ours, again) > 1e-3, (swapped, swapped_strength)


def test_second_pass_takes_its_own_prompt_and_sampler(pipeline) -> None:
    plain, _, _ = _sdrun(pipeline, "euler", HiresFix(steps=2))
    prompted, _, _ = _sdrun(pipeline, "euler", HiresFix(steps=2, prompt="a blue sphere"))
    sampled, _, _ = _sdrun(pipeline, "euler", HiresFix(steps=2, sampler="ddim"))
    assert _relative_l2(prompted, plain) > 1e-3 and _relative_l2(sampled, plain) > 1e-3


def test_the_image_records_the_first_pass_size_and_the_hires_fix(pipeline) -> None:
    result = pipeline.generate(PROMPT, seed=SEED, steps=2, hires=HiresFix(resize=(96, 0), steps=2))
    (settings,) = result.settings
    assert result.images[0].size == (96, 96)
    assert (settings.width, settings.height) == (64, 64)
    assert settings.hires == HiresFix(resize=(96, 0), steps=2, sampler=settings.sampler)


def test_interrupting_the_first_pass_gives_its_image(pipeline) -> None:
    """As the web UI's sample_hr_pass: an interrupted first pass is not upscaled."""
    result = pipeline.generate(PROMPT, seed=SEED, steps=3, hires=HiresFix(), callback=lambda *_: True)
    assert result.stopped and result.images[0].size == (64, 64)


@pytest.mark.parametrize(
    "hires, message",
    [
        (HiresFix(upscaler="R-ESRGAN 4x+"), "unknown hires upscaler 'R-ESRGAN 4x+': sdrun has Latent, "),
        (HiresFix(resize=(4, 0)), "the hires fix's target height 0 is not a positive multiple of 8"),
        (HiresFix(scale=40.0), "hires scale 40.0 is out of range"),
        (HiresFix(strength=0.0), "hires strength 0 leaves no step to run"),
        (HiresFix(steps=0), "hires steps must be a whole number >= 1"),
        (HiresFix(sampler="k_unipc"), "k_unipc is for txt2img only"),
        (HiresFix(resize=(4096, 4096)), "4096x4096 is 16,777,216 pixels, above the limit"),
    ],
)
def test_refusals(pipeline, hires: HiresFix, message: str) -> None:
    with pytest.raises(SettingsError, match="^" + message.replace("(", r"\(").replace("+", r"\+")):
        pipeline.prepare(PROMPT, hires=hires)


def test_the_work_bound_counts_both_passes(tiny_sdexport_dir: Path) -> None:
    """Two images of 20 steps at 64x64 fit a bound that 20 more hires steps at 256x256 break."""
    bounded = Pipeline.load(tiny_sdexport_dir, provider="cpu", limits=Limits(max_work=2.0))
    bounded.prepare(PROMPT, steps=20, num_images=2)
    with pytest.raises(SettingsError, match="and 20 hires steps at 256x256"):
        bounded.prepare(PROMPT, steps=20, num_images=2, hires=HiresFix(scale=4.0))


def test_no_hires_fix_with_an_init_image(pipeline) -> None:
    with pytest.raises(SettingsError, match="hires fix is a second pass of text-to-image"):
        pipeline.prepare(PROMPT, init_image=Image.new("RGB", (64, 64)), hires=HiresFix())
