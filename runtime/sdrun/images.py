"""Between image files and the VAE's pixel arrays ([1, 3, H, W] in [-1, 1], as diffusers converts them).

An init image comes from anywhere, so it is opened lazily and its pixel count checked before anything is
decoded; PIL's own decompression-bomb guard and decoding errors become one-line SettingsErrors. It is
read as a person sees it: EXIF orientation applied, 16-bit samples scaled (not clipped) to 8 bits, and
transparency composited over white (the colour under a transparent pixel is undefined).

Only PNG, JPEG and WebP files are opened: each has one size, in its header, that bounds every frame (an
APNG's or animated WebP's frames lie within its canvas; of a JPEG with more pictures, MPO, only the first
is decoded, the one the header describes), and PIL decodes none of them when opening. Other formats PIL
reads hold several images of their own sizes (ICO, ICNS, TIFF, GIF), and some are decoded when opened
(PIL's ICO loads its largest image: 781 MB for a 13000x13000 PNG inside).
Conversions to 8-bit RGB run in strips of rows, so that memory holds the decoded image, the converted one
and one strip's temporaries (sdrun.limits states the bound).
"""

import warnings
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from sdrun.errors import SettingsError

_EXIF_ORIENTATION = 0x0112
_TRANSPOSING_ORIENTATIONS = {5, 6, 7, 8}  # those that swap width and height
_SIXTEEN_BIT_MODES = {"I;16", "I;16L", "I;16B", "I;16N", "I"}
_ALPHA_MODES = ("RGBA", "LA", "PA", "RGBa", "La")
_UNREADABLE = (OSError, SyntaxError, ValueError, EOFError, zlib.error, Image.DecompressionBombError)
# The formats opened (PIL's names), and how they are named to people.
ACCEPTED_FORMATS = ("PNG", "JPEG", "WEBP")
_ACCEPTED_NAMES = "a PNG, JPEG or WebP image"
# A WebP image counts this many times against the pixel limit: PIL decodes it through libwebp's animation
# decoder, which holds two canvases of its own beside PIL's copy (a 7000x7000 one peaked at 1.1 GB,
# against 0.7 GB as a PNG).
WEBP_PIXEL_WEIGHT = 2
# Pixels converted at a time: a strip's float64 temporaries stay near 8 MiB whatever the image's size.
STRIP_PIXELS = 2**20


def _refuse(source: object, error: BaseException, what: str) -> SettingsError:
    if isinstance(error, Image.DecompressionBombError):
        return SettingsError(f"{what} {source} has too many pixels to decode safely: scale it down first")
    if isinstance(error, Image.UnidentifiedImageError):
        return SettingsError(
            f"cannot read {what} {source}: it is not {_ACCEPTED_NAMES} (or it is damaged): save it as one"
        )
    reason = str(error).strip().splitlines()[0][:200] if str(error).strip() else type(error).__name__
    return SettingsError(f"cannot read {what} {source}: {reason}")


def open_image(image: Image.Image | str | Path, max_pixels: int, what: str = "init image") -> Image.Image:
    """The image, opened but not decoded, refused when it has more than `max_pixels` pixels or is not a PNG,
    JPEG or WebP file (an Image given is taken as it is); `what` names it in errors."""
    if isinstance(image, Image.Image):
        opened = image
    else:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # our limit is lower
                opened = Image.open(image, formats=ACCEPTED_FORMATS)
        except _UNREADABLE as error:
            raise _refuse(image, error, what) from error
    pixels = opened.width * opened.height
    if opened.format == "WEBP" and pixels * WEBP_PIXEL_WEIGHT > max_pixels:
        raise SettingsError(
            f"the {what} is a WebP image of {opened.width}x{opened.height} ({pixels:,} pixels), above the "
            f"limit of {max_pixels // WEBP_PIXEL_WEIGHT:,} pixels for WebP (its decoder holds more copies "
            "than PNG's and JPEG's): scale it down or save it as PNG or JPEG first"
        )
    if pixels > max_pixels:
        raise SettingsError(
            f"the {what} is {opened.width}x{opened.height} ({pixels:,} pixels), above "
            f"the limit of {max_pixels:,} pixels: scale it down first"
        )
    return opened


def oriented_size(image: Image.Image) -> tuple[int, int]:
    """Width and height once the EXIF orientation is applied (read from the header, nothing decoded)."""
    try:
        orientation = image.getexif().get(_EXIF_ORIENTATION)
    except _UNREADABLE:
        orientation = None
    width, height = image.size
    return (height, width) if orientation in _TRANSPOSING_ORIENTATIONS else (width, height)


def fit_within(width: int, height: int, max_area: int, multiple: int) -> tuple[int, int]:
    """(width, height) scaled down, aspect kept, to at most `max_area` pixels, then each side rounded
    down to `multiple`."""
    scale = min(1.0, (max_area / (width * height)) ** 0.5)
    return int(width * scale) // multiple * multiple, int(height * scale) // multiple * multiple


def load_rgb(image: Image.Image, size: tuple[int, int]) -> Image.Image:
    """The opened `image` decoded as 8-bit RGB, upright, at `size` (Lanczos, as diffusers resizes).

    A JPEG is decoded at the smallest power-of-two reduction that still covers `size` (PIL's draft mode):
    a 12-megapixel photo never exists at full size in memory."""
    rgb = decode_upright(image, size, to_rgb)
    if rgb.size == size:
        return rgb
    return rgb.resize(size, resample=Image.Resampling.LANCZOS)


def decode_upright(
    image: Image.Image,
    size: tuple[int, int],
    convert: Callable[[Image.Image], Image.Image],
    what: str = "init image",
) -> Image.Image:
    """The opened `image` decoded (in draft mode for a JPEG, covering `size`), upright, then `convert`ed;
    decoding errors become one-line SettingsErrors naming `what`."""
    source = getattr(image, "filename", "") or "image"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            side = max(size)
            image.draft("RGB", (side, side))
            image.load()
            return convert(ImageOps.exif_transpose(image))
    except SettingsError:
        raise
    except _UNREADABLE as error:
        raise _refuse(source, error, what) from error


def to_rgb(image: Image.Image) -> Image.Image:
    """The decoded `image` as 8-bit RGB, converted in strips (every step is per pixel, so strips give the
    whole conversion's pixels)."""
    if image.mode in _SIXTEEN_BIT_MODES:
        return in_strips(image, "L", _eight_bit).convert("RGB")
    if image.mode == "F":
        raise SettingsError("an image has 32-bit float samples: save it with 8 or 16 bits per sample")
    if has_alpha(image):
        return in_strips(image, "RGB", _over_white)
    return image.convert("RGB")


def in_strips(image: Image.Image, mode: str, convert: Callable[[Image.Image], Image.Image]) -> Image.Image:
    """`convert` (a per-pixel conversion to `mode`) applied to strips of STRIP_PIXELS or so, pasted into
    one image: its temporaries are a strip's, not the whole image's."""
    width, height = image.size
    rows = max(1, STRIP_PIXELS // max(width, 1))
    out = Image.new(mode, image.size)
    for top in range(0, height, rows):
        box = (0, top, width, min(top + rows, height))
        out.paste(convert(image.crop(box)), box)
    return out


def _eight_bit(strip: Image.Image) -> Image.Image:
    """16-bit samples scaled to 8 bits (rounded, as 65535 -> 255)."""
    levels = np.asarray(strip, dtype=np.float64) / 257.0
    return Image.fromarray(np.clip(levels.round(), 0, 255).astype(np.uint8), mode="L")


def _over_white(strip: Image.Image) -> Image.Image:
    rgba = strip.convert("RGBA")
    white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    return Image.alpha_composite(white, rgba).convert("RGB")


def has_alpha(image: Image.Image) -> bool:
    """Whether the opened `image` has an alpha channel or a transparent colour (read from the header)."""
    return image.mode in _ALPHA_MODES or "transparency" in image.info


def to_pixels(image: Image.Image) -> np.ndarray:
    """float32 [1, 3, H, W] in [-1, 1]."""
    array = np.asarray(image, dtype=np.float32) / 255.0
    return (array * 2.0 - 1.0).transpose(2, 0, 1)[None]


def from_pixels(pixels: np.ndarray) -> Image.Image:
    """One decoded [1, 3, H, W] array in [-1, 1] -> an RGB image, rounded to the nearest level."""
    array = np.clip(pixels[0].transpose(1, 2, 0) / 2.0 + 0.5, 0.0, 1.0)
    return Image.fromarray((array * 255.0).round().astype(np.uint8))
