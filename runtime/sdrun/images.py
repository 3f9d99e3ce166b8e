"""Between PIL images and the VAE's pixel arrays ([1, 3, H, W] in [-1, 1]), as diffusers converts them."""

from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from sdrun.errors import SettingsError


def load_image(image: Image.Image | str | Path) -> Image.Image:
    """An RGB image from a PIL image or a file path; an unreadable file is a SettingsError."""
    if isinstance(image, Image.Image):
        return image.convert("RGB")
    try:
        with Image.open(image) as opened:
            return opened.convert("RGB")
    except (OSError, UnidentifiedImageError, SyntaxError, ValueError) as error:
        raise SettingsError(f"cannot read init image {image}: {error}") from None


def fit_size(image: Image.Image, width: int, height: int) -> Image.Image:
    """`image` at width x height (Lanczos, as diffusers' image processor resizes)."""
    if image.size == (width, height):
        return image
    return image.resize((width, height), resample=Image.Resampling.LANCZOS)


def to_pixels(image: Image.Image) -> np.ndarray:
    """float32 [1, 3, H, W] in [-1, 1]."""
    array = np.asarray(image, dtype=np.float32) / 255.0
    return (array * 2.0 - 1.0).transpose(2, 0, 1)[None]


def from_pixels(pixels: np.ndarray) -> Image.Image:
    """One decoded [1, 3, H, W] array in [-1, 1] -> an RGB image, rounded to the nearest level."""
    array = np.clip(pixels[0].transpose(1, 2, 0) / 2.0 + 0.5, 0.0, 1.0)
    return Image.fromarray((array * 255.0).round().astype(np.uint8))
