"""The random draws of one image: sdrun's contract for what a seed means.

Image i of a call uses its own generator, `numpy.random.default_rng(seed + i)`, so it is the same image as a
call for one image with seed + i. Each generator draws, in this order:
- with an init image, the VAE latent sample's noise (latent shape), unless an inpainting UNet runs at
  strength 1 (it starts from pure noise and sees the init image only masked);
- the starting noise (latent shape);
- when inpainting (a mask given, or any call to an inpainting UNet), the masked image's VAE latent
  sample's noise (latent shape; drawn but unused under a plain UNet);
- one draw (latent shape) for each step that re-injects noise, after that step's UNet call (which steps
  do: sdrun.samplers), from the generator this hands on.
All draws are float32 standard normals; this is the order of diffusers' StableDiffusionInpaintPipeline
and StableDiffusionImg2ImgPipeline.
"""

from dataclasses import dataclass

import numpy as np

from sdrun.networks import LatentDistribution


@dataclass(frozen=True)
class ImageDraws:
    """One image's draws before sampling, and the generator the sampler goes on drawing from."""

    rng: np.random.Generator
    init_latents: np.ndarray | None
    noise: np.ndarray
    masked_latents: np.ndarray | None


def draw_image(
    seed: int,
    latent_shape: tuple[int, ...],
    latent_scale: float,
    distribution: LatentDistribution | None,
    masked_distribution: LatentDistribution | None,
    *,
    inpainting: bool,
) -> ImageDraws:
    """The draws of the image of `seed`: the init image's latents from its VAE `distribution` (when there
    is one to use), the starting noise, and when `inpainting` the masked image's latents from
    `masked_distribution` (None under a plain UNet: drawn, not used); latents are scaled by `latent_scale`."""
    rng = np.random.default_rng(seed)
    init_latents = None
    if distribution is not None:
        init_latents = distribution.sample(rng.standard_normal(latent_shape, dtype=np.float32)) * latent_scale
    noise = rng.standard_normal(latent_shape, dtype=np.float32)
    masked_latents = None
    if inpainting:
        # Drawn under a plain UNet too, which has no use for it, as diffusers draws it.
        masked_noise = rng.standard_normal(latent_shape, dtype=np.float32)
        if masked_distribution is not None:
            masked_latents = masked_distribution.sample(masked_noise) * latent_scale
    return ImageDraws(rng, init_latents, noise, masked_latents)
