"""The settings that made one image: what the PNG records and what reproduces it."""

from dataclasses import dataclass

import numpy as np

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
