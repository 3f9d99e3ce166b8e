"""The settings that made one image: what the PNG records and what reproduces it."""

from dataclasses import dataclass


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
