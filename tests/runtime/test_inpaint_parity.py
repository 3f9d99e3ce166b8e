"""Inpainting against diffusers' StableDiffusionInpaintPipeline on the same tiny random weights: an
inpainting UNet (9 input channels) and a plain one (4 channels, mask-blended), each exported by sdexport
and run by sdrun's `generate_each`, reach the same latents after every step.

diffusers draws its random numbers through `randn_tensor`; here every such draw (the VAE latent samples,
the starting noise, the ancestral samplers' step noise) is taken from `numpy.random.default_rng(seed)`
instead, so that diffusers runs on the very draws sdrun's documented contract makes (sdrun.pipeline).
"""

from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import pytest
import torch
from diffusers import StableDiffusionInpaintPipeline
from diffusers.models.autoencoders import vae as diffusers_vae
from diffusers.pipelines.stable_diffusion import pipeline_stable_diffusion_inpaint
from diffusers.schedulers import scheduling_euler_ancestral_discrete
from inpaint_models import box_mask, init_picture
from PIL import Image
from sampler_parity import REFERENCES

from sdrun.pipeline import Pipeline

# Float32 ONNX against float32 PyTorch (about 1e-6 here); two samplers differ by far more.
LATENT_RTOL = 1e-5
MAX_LEVEL_DIFFERENCE = 2
PROMPT = "a red cube on a wooden table, studio light"
NEGATIVE = "blurry, low quality"
GUIDANCE = 7.5
STEPS = 8
SIZE = 64
SEED = 11
# Every module of diffusers that draws for these runs.
RANDOM_MODULES = (pipeline_stable_diffusion_inpaint, diffusers_vae, scheduling_euler_ancestral_discrete)
# (sampler, strength): the deterministic samplers, at full strength (pure-noise start) and below it, and
# an ancestral one, whose step noise follows the masked-image draw.
RUNS = [("euler", 1.0), ("ddim", 0.6), ("dpmpp_2m_karras", 0.75), ("euler_a", 1.0)]


@pytest.fixture(scope="module", params=["inpainting", "plain"])
def models(request: pytest.FixtureRequest) -> tuple[StableDiffusionInpaintPipeline, Pipeline]:
    """diffusers' inpainting pipeline and sdrun's on the same weights, for each kind of UNet."""
    inpainting = request.param == "inpainting"
    source = request.getfixturevalue("inpainting_diffusers_dir" if inpainting else "tiny_diffusers_dir")
    folder = request.getfixturevalue("inpainting_sdexport_dir" if inpainting else "tiny_sdexport_dir")
    reference = StableDiffusionInpaintPipeline.from_pretrained(source).to(torch.float32)
    pipeline = Pipeline.load(folder, provider="cpu")
    assert pipeline.facts.inpainting == inpainting
    return reference, pipeline


@contextmanager
def numpy_draws(seed: int) -> Iterator[None]:
    """diffusers' randn_tensor replaced, in every module that draws here, by one numpy generator."""
    rng = np.random.default_rng(seed)

    def randn_tensor(shape, generator=None, device=None, dtype=None, layout=None) -> torch.Tensor:
        return torch.from_numpy(rng.standard_normal(tuple(shape), dtype=np.float32))

    originals = [module.randn_tensor for module in RANDOM_MODULES]
    for module in RANDOM_MODULES:
        module.randn_tensor = randn_tensor
    try:
        yield
    finally:
        for module, original in zip(RANDOM_MODULES, originals, strict=True):
            module.randn_tensor = original


def reference_run(
    reference: StableDiffusionInpaintPipeline,
    sampler: str,
    strength: float,
    mask: Image.Image,
) -> tuple[list[np.ndarray], Image.Image]:
    """diffusers' latents after each step (after its blend), and its picture (no overlay)."""
    scheduler_class, options = REFERENCES[sampler]
    components = {
        **reference.components,
        "scheduler": scheduler_class.from_config(reference.scheduler.config, **options),
    }
    trajectory: list[np.ndarray] = []

    def record(pipe, step, timestep, tensors):
        trajectory.append(tensors["latents"].numpy().copy())
        return tensors

    with numpy_draws(SEED):
        latents = StableDiffusionInpaintPipeline(**components)(
            PROMPT,
            image=init_picture(SIZE),
            mask_image=mask,
            strength=strength,
            negative_prompt=NEGATIVE,
            num_inference_steps=STEPS,
            guidance_scale=GUIDANCE,
            height=SIZE,
            width=SIZE,
            output_type="latent",
            callback_on_step_end=record,
        ).images
    with torch.no_grad():
        pixels = reference.vae.decode(latents / reference.vae.config.scaling_factor).sample
    return trajectory, reference.image_processor.postprocess(pixels, output_type="pil")[0]


def sdrun_run(
    pipeline: Pipeline,
    sampler: str,
    strength: float,
    mask: Image.Image,
    mask_blur: int = 0,
    seed: int = SEED,
) -> tuple[list[np.ndarray], Image.Image]:
    trajectory: list[np.ndarray] = []

    def record(step: int, total: int, latents: np.ndarray) -> None:
        trajectory.append(latents.copy())

    result = pipeline.generate(
        PROMPT,
        NEGATIVE,
        steps=STEPS,
        guidance_scale=GUIDANCE,
        sampler=sampler,
        seed=seed,
        init_image=init_picture(SIZE),
        mask=mask,
        mask_blur=mask_blur,
        strength=strength,
        overlay=False,
        callback=record,
    )
    return trajectory, result.images[0]


def relative_l2(ours: np.ndarray, theirs: np.ndarray) -> float:
    return float(np.linalg.norm(ours - theirs) / np.linalg.norm(theirs))


def assert_same_trajectory(ours: list[np.ndarray], theirs: list[np.ndarray]) -> None:
    assert len(ours) == len(theirs) > 0
    for step, (mine, reference) in enumerate(zip(ours, theirs, strict=True)):
        assert relative_l2(mine, reference) < LATENT_RTOL, f"latents after step {step}"


def level_difference(ours: Image.Image, theirs: Image.Image) -> int:
    return int(np.abs(np.asarray(ours, dtype=np.int16) - np.asarray(theirs, dtype=np.int16)).max())


@pytest.mark.parametrize(("sampler", "strength"), RUNS)
def test_inpainting_matches_diffusers_step_by_step(models, sampler: str, strength: float) -> None:
    """The mask is given at half the output size: both resize it (Lanczos) before binarizing it."""
    reference, pipeline = models
    mask = box_mask(SIZE // 2)
    theirs, their_picture = reference_run(reference, sampler, strength, mask)
    ours, our_picture = sdrun_run(pipeline, sampler, strength, mask)
    assert_same_trajectory(ours, theirs)
    assert level_difference(our_picture, their_picture) <= MAX_LEVEL_DIFFERENCE


def test_mask_blur_is_diffusers_mask_processor_blur(models) -> None:
    """--mask-blur N blurs as diffusers' `mask_processor.blur(mask, N)` does before the pipeline."""
    reference, pipeline = models
    mask = box_mask(SIZE, (0.3, 0.2, 0.55, 0.8))
    theirs, _ = reference_run(reference, "euler", 1.0, reference.mask_processor.blur(mask, 4))
    ours, _ = sdrun_run(pipeline, "euler", 1.0, mask, mask_blur=4)
    assert_same_trajectory(ours, theirs)


def test_the_parity_check_has_power(models) -> None:
    """Another mask, another seed's draws, or the other kind of start would each be caught."""
    reference, pipeline = models
    theirs, _ = reference_run(reference, "euler", 1.0, box_mask(SIZE // 2))
    shifted, _ = sdrun_run(pipeline, "euler", 1.0, box_mask(SIZE // 2, (0.375, 0.25, 0.875, 0.625)))
    assert relative_l2(shifted[-1], theirs[-1]) > 100 * LATENT_RTOL
    other_start, _ = sdrun_run(pipeline, "euler", 0.999, box_mask(SIZE // 2))
    assert relative_l2(other_start[0], theirs[0]) > 100 * LATENT_RTOL
    # The next seed: other starting noise and other VAE latent draws (the kept area is drawn too).
    other_seed, _ = sdrun_run(pipeline, "euler", 1.0, box_mask(SIZE // 2), seed=SEED + 1)
    assert relative_l2(other_seed[-1], theirs[-1]) > 100 * LATENT_RTOL
