"""Inpainting masks: read, prepared as diffusers' StableDiffusionInpaintPipeline prepares them, and used to
paste the init image's pixels back outside the repainted area.

A mask is white where the picture is repainted. It is read as AUTOMATIC1111 reads one: its alpha channel
when it has transparency, else its luminance; resized to the output size (Lanczos, as diffusers resizes);
blurred by `mask_blur` pixels (PIL's Gaussian blur: A1111's "Mask blur", diffusers'
`VaeImageProcessor.blur`). The sampler sees it binarized at 0.5 (diffusers' mask processor) and, at the
latents' size, every vae_factor-th pixel of that (torch's nearest interpolation, as the pipeline
downsamples it). The blurred mask itself blends the decoded picture into the init image at the end.
"""

from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageFilter

from sdrun.images import decode_upright, has_alpha, to_rgb

# A1111's default and the top of its slider, in pixels.
DEFAULT_MASK_BLUR = 4
MAX_MASK_BLUR = 64
# diffusers' VaeImageProcessor.binarize: a mask value (in [0, 1]) at or above this is repainted.
_THRESHOLD = 0.5


@dataclass(frozen=True)
class Mask:
    """A mask at the output size: `soft` (8-bit, blurred) blends the final picture; `binary` [1, 1, H, W]
    float32 is 1 where the sampler repaints and 0 where the init image is kept."""

    soft: Image.Image
    binary: np.ndarray

    @classmethod
    def of(cls, soft: Image.Image) -> "Mask":
        values = np.asarray(soft, dtype=np.float32) / 255.0
        return cls(soft, (values >= _THRESHOLD).astype(np.float32)[None, None])

    @classmethod
    def everywhere(cls, size: tuple[int, int]) -> "Mask":
        """Repaint all: what an inpainting UNet is given without a mask (A1111's text-to-image with one)."""
        return cls.of(Image.new("L", size, 255))

    def latent(self, vae_factor: int) -> np.ndarray:
        """[1, 1, H / vae_factor, W / vae_factor]: the mask the UNet and the latent blend see."""
        return np.ascontiguousarray(self.binary[:, :, ::vae_factor, ::vae_factor])

    def masked(self, pixels: np.ndarray) -> np.ndarray:
        """The init image's pixels ([1, 3, H, W] in [-1, 1]) with the repainted ones set to 0 (mid-gray),
        diffusers' `masked_image = init_image * (mask < 0.5)`."""
        return pixels * (self.binary < _THRESHOLD)


def load_mask(image: Image.Image, size: tuple[int, int], blur: int) -> Mask:
    """The opened mask `image` decoded, resized to `size` and blurred by `blur` pixels."""
    gray = decode_upright(image, size, mask_channel, "mask")
    if gray.size != size:
        gray = gray.resize(size, resample=Image.Resampling.LANCZOS)
    if blur > 0:
        gray = gray.filter(ImageFilter.GaussianBlur(blur))
    return Mask.of(gray)


def mask_channel(image: Image.Image) -> Image.Image:
    """The alpha channel of a mask with transparency (A1111's rule), else its luminance."""
    if has_alpha(image):
        alpha = image.convert("RGBA").getchannel("A")
        if alpha.getextrema() != (255, 255):
            return alpha
    return to_rgb(image).convert("L")


def paste_unmasked(generated: Image.Image, init: Image.Image, mask: Mask) -> Image.Image:
    """The init image's pixels where the mask is black, the generated ones where it is white, blended
    across the blurred edge (A1111's overlay; diffusers' `apply_overlay`)."""
    return Image.composite(generated, init, mask.soft)
