"""The settings that made one image: what the PNG records and what reproduces it."""

from dataclasses import dataclass


@dataclass(frozen=True)
class ImageSettings:
    """Everything `Pipeline.generate` needs to make this one image again (given the same model folder).

    `strength` is None for text-to-image; for image-to-image the init image itself is not recorded.
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
