"""Bounds on what one generation may ask for, checked with the settings before any session runs.

Every number here is generous for Stable Diffusion 1.x and 2.x and small next to this machine kind's
memory; `Limits` is a parameter of the library (`Pipeline.load(limits=...)`) and `--max-pixels` of the CLI.
"""

from dataclasses import dataclass

from sdrun.errors import SettingsError

# 4 megapixels: 2048x2048, sixteen times SD 1.x's 512x512 (a 2048x2048 decode in tiles takes ~1.5 GB).
DEFAULT_MAX_PIXELS = 2048 * 2048
# An init image is refused above this many pixels before it is decoded (a 48-megapixel photo passes;
# decoded as RGBA it takes under 200 MB before being scaled down to the model's size).
DEFAULT_MAX_INIT_PIXELS = 50_000_000
MAX_IMAGES = 1000
MAX_STEPS = 1000
# CLIP reads 77 tokens (about 300 characters); a prompt a hundred times longer is not a prompt.
MAX_PROMPT_CHARACTERS = 30_000
MAX_GUIDANCE = 1000.0


@dataclass(frozen=True)
class Limits:
    """The most one `generate` call may ask: pixels per image, init-image pixels before decoding,
    images per call, steps."""

    max_pixels: int = DEFAULT_MAX_PIXELS
    max_init_pixels: int = DEFAULT_MAX_INIT_PIXELS
    max_images: int = MAX_IMAGES
    max_steps: int = MAX_STEPS

    def check_size(self, width: int, height: int) -> None:
        if width * height > self.max_pixels:
            raise SettingsError(
                f"{width}x{height} is {width * height:,} pixels, above the limit of {self.max_pixels:,}: "
                "ask for a smaller size (or raise the limit with --max-pixels)"
            )

    def check_counts(self, num_images: int, steps: int) -> None:
        if num_images > self.max_images:
            raise SettingsError(f"{num_images} images in one call is above the limit of {self.max_images}")
        if steps > self.max_steps:
            raise SettingsError(f"{steps} steps is above the limit of {self.max_steps}: use fewer steps")


DEFAULT_LIMITS = Limits()
