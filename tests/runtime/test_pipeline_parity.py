"""End to end against an independent pipeline: diffusers' StableDiffusionPipeline (PyTorch) on the tiny
random-weight model, and sdrun on an ONNX folder of the same weights (ours from `sdexport build`, and the
one optimum-cli exports), started from the same noise with the same deterministic sampler, give the same
latents before the decoder (relative L2 within LATENT_RTOL, far below the gap between two samplers) and
the same image to within 2 levels of 255."""

from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import (
    DDIMScheduler,
    DPMSolverMultistepScheduler,
    EulerDiscreteScheduler,
    StableDiffusionImg2ImgPipeline,
    StableDiffusionPipeline,
)
from diffusers.utils.torch_utils import randn_tensor
from PIL import Image

from sdrun.images import load_rgb, open_image
from sdrun.pipeline import Pipeline

MAX_LEVEL_DIFFERENCE = 2
# Float32 ONNX against float32 PyTorch over 8 steps (about 1e-6 here); two samplers' latents differ by far
# more than this (test_latent_tolerance_tells_the_samplers_apart).
LATENT_RTOL = 1e-5
PROMPT = "a red cube on a wooden table, studio light"
NEGATIVE = "blurry, low quality"
GUIDANCE = 7.5
STEPS = 8
SIZE = 64

# sdrun sampler -> the diffusers scheduler (and its config overrides) that runs the same method.
DETERMINISTIC_SAMPLERS = {
    "ddim": (DDIMScheduler, {}),
    "euler": (EulerDiscreteScheduler, {}),
    "dpmpp_2m_karras": (DPMSolverMultistepScheduler, {"use_karras_sigmas": True}),
}


@pytest.fixture(scope="module")
def reference(tiny_diffusers_dir: Path) -> StableDiffusionPipeline:
    return StableDiffusionPipeline.from_pretrained(tiny_diffusers_dir).to(torch.float32)


@pytest.fixture(scope="module", params=["sdexport", "optimum"])
def sdrun_pipeline(request: pytest.FixtureRequest) -> Pipeline:
    folder = request.getfixturevalue("tiny_sdexport_dir" if request.param == "sdexport" else "tiny_onnx_dir")
    return Pipeline.load(folder, provider="cpu")


def _with_scheduler(reference: StableDiffusionPipeline, sampler: str) -> dict:
    scheduler_class, overrides = DETERMINISTIC_SAMPLERS[sampler]
    return {
        **reference.components,
        "scheduler": scheduler_class.from_config(reference.scheduler.config, **overrides),
    }


def _level_difference(ours: Image.Image, theirs: Image.Image) -> int:
    return int(np.abs(np.asarray(ours, dtype=np.int16) - np.asarray(theirs, dtype=np.int16)).max())


def _relative_l2(ours: np.ndarray, theirs: np.ndarray) -> float:
    return float(np.linalg.norm(ours - theirs) / np.linalg.norm(theirs))


def _decoded(reference: StableDiffusionPipeline, latents: torch.Tensor) -> Image.Image:
    """diffusers' own decode and post-processing of its latents (output_type="pil" in two stages)."""
    with torch.no_grad():
        pixels = reference.vae.decode(latents / reference.vae.config.scaling_factor).sample
    return reference.image_processor.postprocess(pixels, output_type="pil")[0]


def _reference_latents(reference: StableDiffusionPipeline, sampler: str, noise: torch.Tensor) -> torch.Tensor:
    return StableDiffusionPipeline(**_with_scheduler(reference, sampler))(
        PROMPT,
        negative_prompt=NEGATIVE,
        num_inference_steps=STEPS,
        guidance_scale=GUIDANCE,
        height=SIZE,
        width=SIZE,
        latents=noise.clone(),
        output_type="latent",
    ).images


def _noise(channels: int) -> torch.Tensor:
    return torch.randn((1, channels, SIZE // 8, SIZE // 8), generator=torch.Generator().manual_seed(3))


def _init_image(size: int) -> Image.Image:
    """A smooth picture with an edge in it, so the VAE encoder sees structure."""
    y, x = np.mgrid[0:size, 0:size] / size
    rgb = np.stack([x, y, ((x - 0.5) ** 2 + (y - 0.5) ** 2 < 0.1).astype(float)], axis=-1)
    return Image.fromarray((rgb * 255).astype(np.uint8))


@pytest.mark.parametrize("sampler", DETERMINISTIC_SAMPLERS)
def test_text_to_image_matches_diffusers(reference, sdrun_pipeline: Pipeline, sampler: str) -> None:
    noise = _noise(sdrun_pipeline.facts.latent_channels)
    their_latents = _reference_latents(reference, sampler, noise)
    theirs = _decoded(reference, their_latents)

    embeddings = sdrun_pipeline.encode_prompt(PROMPT, NEGATIVE, GUIDANCE)
    latents = sdrun_pipeline.denoise(
        embeddings,
        noise.numpy(),
        np.random.default_rng(0),
        steps=STEPS,
        guidance_scale=GUIDANCE,
        sampler=sampler,
    )
    assert _relative_l2(latents, their_latents.numpy()) < LATENT_RTOL
    (ours,) = sdrun_pipeline.decode(latents)
    assert ours.size == theirs.size == (SIZE, SIZE)
    assert _level_difference(ours, theirs) <= MAX_LEVEL_DIFFERENCE


def test_latent_tolerance_tells_the_samplers_apart(reference) -> None:
    """The power of the latent check: on this random model, DDIM, Euler and DPM++ 2M Karras all give
    images within a few levels of each other, but latents far apart at LATENT_RTOL."""
    noise = _noise(reference.unet.config.in_channels)
    latents = {
        sampler: _reference_latents(reference, sampler, noise).numpy() for sampler in DETERMINISTIC_SAMPLERS
    }
    for first, second in (("ddim", "euler"), ("euler", "dpmpp_2m_karras"), ("ddim", "dpmpp_2m_karras")):
        assert _relative_l2(latents[first], latents[second]) > 50 * LATENT_RTOL, (first, second)


@pytest.mark.parametrize("sampler", ["ddim", "euler"])
def test_image_to_image_matches_diffusers(reference, sdrun_pipeline: Pipeline, sampler: str) -> None:
    """diffusers draws the VAE latent sample and then the starting noise from one torch generator;
    sdrun is given the same two draws."""
    size, strength, seed = SIZE, 0.6, 5
    init_image = _init_image(size)
    their_latents = StableDiffusionImg2ImgPipeline(**_with_scheduler(reference, sampler))(
        PROMPT,
        image=init_image,
        strength=strength,
        negative_prompt=NEGATIVE,
        num_inference_steps=STEPS,
        guidance_scale=GUIDANCE,
        generator=torch.Generator().manual_seed(seed),
        output_type="latent",
    ).images
    theirs = _decoded(reference, their_latents)

    generator = torch.Generator().manual_seed(seed)
    shape = (1, sdrun_pipeline.facts.latent_channels, size // 8, size // 8)
    vae_noise = randn_tensor(shape, generator=generator).numpy()
    start_noise = randn_tensor(shape, generator=generator).numpy()
    distribution = sdrun_pipeline.encode_image(load_rgb(open_image(init_image, 10**6), init_image.size))
    init_latents = distribution.sample(vae_noise) * sdrun_pipeline.facts.latent_scale
    embeddings = sdrun_pipeline.encode_prompt(PROMPT, NEGATIVE, GUIDANCE)
    latents = sdrun_pipeline.denoise(
        embeddings,
        start_noise,
        np.random.default_rng(0),
        steps=STEPS,
        guidance_scale=GUIDANCE,
        sampler=sampler,
        init_latents=init_latents,
        strength=strength,
    )
    assert _relative_l2(latents, their_latents.numpy()) < LATENT_RTOL
    (ours,) = sdrun_pipeline.decode(latents)
    assert _level_difference(ours, theirs) <= MAX_LEVEL_DIFFERENCE
