"""The settings of a generation: `GenerationSettings`, what one call asks for (the one object that the CLI,
both HTTP APIs, `--from-png` and library callers build), and `ImageSettings`, what made one image (what the
PNG records and what reproduces it).
"""

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from sdrun.errors import SettingsError, quoted

# One seed range for the library, the CLI, the server and the PNG reader: the web UI's (its generators take
# 32-bit seeds, and its PNGs never carry larger ones), so that every seed sdrun writes into a PNG is one that
# --from-png and the web UI read back. Image i of a call has seed + i: every image's seed is in range.
MAX_SEED = 2**32 - 1


def random_seed(num_images: int = 1) -> int:
    """A random first seed whose call of `num_images` images stays within MAX_SEED (for one image, the draw
    sdrun always made)."""
    return int(np.random.default_rng().integers(MAX_SEED + 2 - num_images))


def check_seed(seed: object, num_images: int = 1) -> int:
    """`seed` as an int, refused unless it and each later image's seed + i are within 0..MAX_SEED."""
    highest = MAX_SEED - (num_images - 1)
    if isinstance(seed, bool) or not isinstance(seed, int | np.integer) or not 0 <= seed <= highest:
        images = f" (image i of {num_images} gets seed + i, at most {MAX_SEED})" if num_images > 1 else ""
        raise SettingsError(
            f"seed must be a whole number from 0 to {highest}{images}, not {quoted(seed)}"
        )
    return int(seed)


@dataclass(frozen=True)
class HiresFix:
    """AUTOMATIC1111's hires fix: a second pass that upscales the first pass's result to the target size and
    runs image-to-image on it (sdrun.hires). The target is `resize` (width, height; a side of 0 follows the
    first pass's aspect, both given crop to it) or else the first pass's size times `scale`. `upscaler` is
    one of A1111's latent or pixel upscalers (sdrun.a1111); `steps` None runs as many steps as the first
    pass; `strength` is the second pass's denoising strength; prompts, sampler and schedule type None are
    the first pass's."""

    scale: float = 2.0
    resize: tuple[int, int] | None = None
    upscaler: str = "Latent"
    steps: int | None = None
    strength: float = 0.7
    prompt: str | None = None
    negative_prompt: str | None = None
    sampler: str | None = None
    schedule_type: str | None = None


@dataclass(frozen=True)
class ImageSettings:
    """Everything `Pipeline.generate` needs to make this one image again (given the same model folder).

    `strength` is None for text-to-image; for image-to-image the init image itself is not recorded, nor
    is an inpainting mask: `mask_blur` is None without one.
    """

    prompt: str
    negative_prompt: str
    steps: int
    sampler: str
    guidance_scale: float
    seed: int
    width: int
    height: int
    model: str = ""
    strength: float | None = None
    mask_blur: int | None = None
    # Inpainting: whether the init image's pixels were pasted back outside the mask (sdrun's default; the
    # PNG says `Mask overlay: off` when not, so that the picture can be made again).
    overlay: bool = True
    # The model folder's CLIP skip (fixed when it was built), recorded as the web UI records it.
    clip_skip: int = 1
    # The sampler's eta, when it takes one and it is not the sampler's default.
    eta: float | None = None
    # The web UI's short hash of the checkpoint the model folder was built from (sdrun.a1111.model_hash),
    # "" when not known.
    model_hash: str = ""
    # The random source and the web UI's seed features (sdrun.draws); `subseed` is this image's.
    random_source: str | None = None
    eta_noise_seed_delta: int = 0
    subseed: int | None = None
    subseed_strength: float = 0.0
    seed_resize_from: tuple[int, int] | None = None
    # How prompt weights act (sdrun.text_conditioning.EMPHASIS_MODES), and A1111's "Pad conds".
    emphasis: str = "Original"
    pad_conds: bool = False
    # The hires fix's second pass (width and height stay the first pass's, as the web UI records them).
    hires: HiresFix | None = None
    # A1111's schedule type of the samplers that take one (A1111's own, the k_* ones); None: Automatic.
    schedule_type: str | None = None


# An init image or a mask: a picture, or the path of its file.
ImageSource = Image.Image | str | Path


@dataclass(frozen=True)
class GenerationSettings:
    """Every setting one generation call can give. None means the model folder's: its generation defaults
    (sdrun.defaults) for steps, guidance scale, sampler and strength, the UNet's sample size (or the init
    image's size) for width and height, a random seed, the sampler's own eta, and a mask blur of
    sdrun.inpaint.DEFAULT_MASK_BLUR pixels. `eta` is the noise of the samplers that take one (DDIM's eta,
    0 deterministic; TCD's gamma). `hires` adds AUTOMATIC1111's hires fix to text-to-image (HiresFix).
    `Pipeline.prepare` checks and completes them into a
    GenerationRequest; `Pipeline.generate_each` says what each does.
    """

    prompt: str = ""
    negative_prompt: str = ""
    steps: int | None = None
    guidance_scale: float | None = None
    sampler: str | None = None
    eta: float | None = None
    seed: int | None = None
    width: int | None = None
    height: int | None = None
    num_images: int = 1
    init_image: ImageSource | None = None
    strength: float | None = None
    mask: ImageSource | None = None
    mask_blur: int | None = None
    overlay: bool = True
    # The random source (None: "numpy"; sdrun.random_sources) and the web UI's seed features (sdrun.draws):
    # a variation seed (None with a strength: a random one) and its strength, and the (width, height) in
    # pixels to draw the noise at and paste centred.
    random_source: str | None = None
    eta_noise_seed_delta: int = 0
    subseed: int | None = None
    subseed_strength: float = 0.0
    seed_resize_from: tuple[int, int] | None = None
    emphasis: str = "Original"
    pad_conds: bool = False
    hires: HiresFix | None = None
    # A1111's schedule type (its label or its API's name) for the samplers that take one; None: Automatic.
    schedule_type: str | None = None

    def but(self, **changes: Any) -> "GenerationSettings":
        """These settings with `changes`; a name that is not a setting is a SettingsError naming them."""
        unknown = set(changes) - set(SETTING_NAMES)
        if unknown:
            raise SettingsError(
                f"unknown setting {quoted(sorted(unknown)[0])}: the settings are {', '.join(SETTING_NAMES)}"
            )
        return dataclasses.replace(self, **changes)

    @classmethod
    def from_image(cls, recorded: "ImageSettings", **changes: Any) -> "GenerationSettings":
        """The settings that make `recorded`'s image again (its init image and mask, which a PNG does not
        carry, come in `changes`, with anything else to change; another sampler leaves the recorded
        schedule type behind)."""
        made = cls(
            prompt=recorded.prompt,
            negative_prompt=recorded.negative_prompt,
            steps=recorded.steps,
            guidance_scale=recorded.guidance_scale,
            sampler=recorded.sampler,
            eta=recorded.eta,
            seed=recorded.seed,
            width=recorded.width,
            height=recorded.height,
            strength=recorded.strength,
            mask_blur=recorded.mask_blur,
            overlay=recorded.overlay,
            random_source=recorded.random_source,
            eta_noise_seed_delta=recorded.eta_noise_seed_delta,
            subseed=recorded.subseed,
            subseed_strength=recorded.subseed_strength,
            seed_resize_from=recorded.seed_resize_from,
            emphasis=recorded.emphasis,
            pad_conds=recorded.pad_conds,
            hires=recorded.hires,
            schedule_type=None if "sampler" in changes else recorded.schedule_type,
        )
        return made.but(**changes)


SETTING_NAMES = tuple(field.name for field in dataclasses.fields(GenerationSettings))
