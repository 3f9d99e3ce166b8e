"""The random draws of one image: what a seed means, in sdrun's contract and in the AUTOMATIC1111 web UI's.

Image i of a call uses its own generator of the call's random source (sdrun.random_sources), seeded with
seed + i, so it is the same image as a call for one image with seed + i. Under the default source,
"numpy" (`numpy.random.default_rng(seed + i)`), the generator draws, in this order:
- with an init image, the VAE latent sample's noise (latent shape), unless an inpainting UNet runs at
  strength 1 (it starts from pure noise and sees the init image only masked);
- the starting noise (latent shape);
- when inpainting (a mask given, or any call to an inpainting UNet), the masked image's VAE latent
  sample's noise (latent shape; drawn but unused under a plain UNet);
- one draw (latent shape) for each step that re-injects noise, after that step's UNet call (which steps
  do: sdrun.samplers), from the generator this hands on.
All draws are float32 standard normals; this is the order of diffusers' StableDiffusionInpaintPipeline
and StableDiffusionImg2ImgPipeline.

The web UI's sources ("gpu", "nv", "cpu") draw what its `ImageRNG` draws (modules/rng.py): the image's
generator draws the starting noise first and then the sampler's noise. The web UI samples the VAE latents
of an init image and of a masked image with torch's global generator, whose state at that moment depends
on everything the process ran before, so no one can draw those numbers again: under these sources sdrun
draws those two from `numpy.random.default_rng(seed + i)` instead (in the order above), which keeps the
picture reproducible in sdrun; they are the one part of an image-to-image or inpainting call that differs
from the web UI's (and the VAE's spread is small).

The web UI's seed features, for every source (`SeedFeatures`; modules/processing.py and rng.py):
- variation seed (`subseed`, `subseed_strength` s != 0): the starting noise is the web UI's `slerp` from
  the seed's noise to the noise of the subseed's fresh generator, by s. Then every image of the call keeps
  the call's seed and image i gets subseed + i, as the web UI numbers them.
- `seed_resize_from` (width, height in pixels): the seed's noise (and the subseed's) is drawn at that size
  from fresh generators and pasted, centred, into the image generator's first draw at the real size (its
  overhang cut off), so that a picture keeps its composition at another size.
- eta noise seed delta (ENSD, d != 0): after the starting noise, the sampler draws from a fresh generator
  seeded with seed + i + d instead of going on with the image's.
"""

from dataclasses import dataclass

import numpy as np

from sdrun.networks import LatentDistribution
from sdrun.random_sources import DEFAULT_RANDOM_SOURCE, NUMPY, NormalSource, normal_source


@dataclass(frozen=True)
class SeedFeatures:
    """A call's random source and the web UI's seed features (the defaults: sdrun's contract alone)."""

    random_source: str = DEFAULT_RANDOM_SOURCE
    eta_noise_seed_delta: int = 0
    subseed: int | None = None
    subseed_strength: float = 0.0
    seed_resize_from: tuple[int, int] | None = None

    def image_seeds(self, seed: int, index: int) -> tuple[int, int | None]:
        """(seed, subseed) of image `index` of a call with first seed `seed`, as the web UI numbers them:
        seed + index, except that with a variation strength every image keeps the seed and varies by its
        subseed, subseed + index."""
        varied = self.subseed_strength != 0
        return (seed if varied else seed + index), (None if self.subseed is None else self.subseed + index)


@dataclass(frozen=True)
class ImageDraws:
    """One image's draws before sampling, and the generator the sampler goes on drawing from."""

    rng: NormalSource
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
    features: SeedFeatures = SeedFeatures(),
    subseed: int | None = None,
    vae_factor: int = 8,
) -> ImageDraws:
    """The draws of the image of `seed` (and `subseed`: `features.image_seeds` gives both): the init
    image's latents from its VAE `distribution` (when there is one to use), the starting noise, and when
    `inpainting` the masked image's latents from `masked_distribution` (None under a plain UNet: drawn, not
    used); latents are scaled by `latent_scale`. `vae_factor` turns `features.seed_resize_from` into a
    latent size."""
    source = features.random_source
    rng = normal_source(source, seed)
    # The VAE samples' noise: sdrun's own draws (the module's docstring says why for the web UI's sources).
    vae_rng = rng if source == NUMPY else np.random.default_rng(seed)
    init_latents = None
    if distribution is not None:
        init_noise = vae_rng.standard_normal(latent_shape, dtype=np.float32)
        init_latents = distribution.sample(init_noise) * latent_scale
    noise = starting_noise(rng, seed, subseed, latent_shape, features, vae_factor)
    masked_latents = None
    if inpainting:
        # Drawn under a plain UNet too, which has no use for it, as diffusers draws it.
        masked_noise = vae_rng.standard_normal(latent_shape, dtype=np.float32)
        if masked_distribution is not None:
            masked_latents = masked_distribution.sample(masked_noise) * latent_scale
    return ImageDraws(sampler_source(rng, seed, features), init_latents, noise, masked_latents)


def image_noise(
    seed: int,
    subseed: int | None,
    latent_shape: tuple[int, ...],
    features: SeedFeatures,
    vae_factor: int = 8,
) -> tuple[np.ndarray, NormalSource]:
    """The web UI's `ImageRNG` for one image of a fresh pass (its hires fix makes one at the new size): the
    starting noise from a fresh generator of `seed`, and the generator the sampler goes on drawing from."""
    rng = normal_source(features.random_source, seed)
    noise = starting_noise(rng, seed, subseed, latent_shape, features, vae_factor)
    return noise, sampler_source(rng, seed, features)


def sampler_source(rng: NormalSource, seed: int, features: SeedFeatures) -> NormalSource:
    """What the sampler draws from after the starting noise: `rng` going on, or with an ENSD a fresh
    generator of seed + ENSD."""
    if features.eta_noise_seed_delta:
        return normal_source(features.random_source, seed + features.eta_noise_seed_delta)
    return rng


def starting_noise(
    rng: NormalSource,
    seed: int,
    subseed: int | None,
    latent_shape: tuple[int, ...],
    features: SeedFeatures,
    vae_factor: int = 8,
) -> np.ndarray:
    """The starting noise of one image (the web UI's `ImageRNG.first`): `rng`'s next draw, varied towards
    the subseed's noise and drawn at another size as `features` ask."""
    channels, height, width = latent_shape[-3:]
    shape = (channels, height, width)
    drawn_shape = shape
    if features.seed_resize_from is not None:
        from_width, from_height = features.seed_resize_from
        drawn_shape = (channels, from_height // vae_factor, from_width // vae_factor)
    resized = drawn_shape != shape
    subnoise = None
    if subseed is not None and features.subseed_strength != 0:
        subnoise = _first_draw(features.random_source, subseed, drawn_shape)
    if resized:
        noise = _first_draw(features.random_source, seed, drawn_shape)
    else:
        noise = rng.standard_normal(shape, dtype=np.float32)
    if subnoise is not None:
        noise = a1111_slerp(features.subseed_strength, noise, subnoise)
    if resized:
        noise = paste_centred(noise, rng.standard_normal(shape, dtype=np.float32))
    return noise.reshape(latent_shape)


def _first_draw(source: str, seed: int, shape: tuple[int, ...]) -> np.ndarray:
    """The first draw of a fresh generator (the web UI's `randn(seed, shape)`)."""
    return normal_source(source, seed).standard_normal(shape, dtype=np.float32)


def a1111_slerp(strength: float, low: np.ndarray, high: np.ndarray) -> np.ndarray:
    """The web UI's spherical interpolation from `low` to `high` (channels, height, width), by `strength`:
    per channel and column, the angle between the two columns along the height; when the columns are
    nearly parallel on average (mean cosine above 0.9995) it returns low * strength + high * (1 - strength)
    instead, the web UI's weights as they are (reversed against the slerp's)."""
    low_unit = low / np.sqrt(np.sum(low * low, axis=1, keepdims=True))
    high_unit = high / np.sqrt(np.sum(high * high, axis=1, keepdims=True))
    cosine = np.sum(low_unit * high_unit, axis=1)
    if cosine.mean() > 0.9995:
        return low * np.float32(strength) + high * np.float32(1 - strength)
    omega = np.arccos(cosine)
    sine = np.sin(omega)
    low_weight = np.sin(np.float32(1.0 - strength) * omega) / sine
    high_weight = np.sin(np.float32(strength) * omega) / sine
    return low_weight[:, None, :] * low + high_weight[:, None, :] * high


def paste_centred(small: np.ndarray, large: np.ndarray) -> np.ndarray:
    """`large` (channels, height, width) with `small` pasted at its centre, each side of `small` cut to
    fit where it is larger, offsets rounded down as the web UI rounds them."""
    out = large.copy()
    spans = []
    for small_side, large_side in zip(small.shape[1:], large.shape[1:], strict=True):
        offset = (large_side - small_side) // 2
        span = small_side if offset >= 0 else small_side + 2 * offset
        spans.append((max(offset, 0), max(-offset, 0), span))
    (to_y, from_y, rows), (to_x, from_x, columns) = spans
    pasted = small[:, from_y : from_y + rows, from_x : from_x + columns]
    out[:, to_y : to_y + rows, to_x : to_x + columns] = pasted
    return out
