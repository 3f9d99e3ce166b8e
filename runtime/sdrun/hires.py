"""AUTOMATIC1111's hires fix, the arithmetic of its second pass: the target size, the upscaling of the first
pass's result, and the second pass's schedule (modules/processing.py, StableDiffusionProcessingTxt2Img).

A latent upscaler resizes the first pass's latents as torch.nn.functional.interpolate does in each of the
web UI's modes (`resize_latents`); a pixel upscaler decodes them, resizes the picture with PIL as
modules/upscaler.py does (`upscale_picture`) and encodes it again. The web UI encodes with a sample of the
VAE's distribution drawn from torch's global generator, which no seed reproduces: sdrun takes the
distribution's mean, so that an image's draws stay those of its seed (sdrun.draws) and the second pass's
noise is the first draw at the new size, as the web UI's fresh ImageRNG gives it.
"""

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from PIL import Image

from sdrun import a1111
from sdrun.errors import SettingsError
from sdrun.samplers import SAMPLERS

UPSCALERS = (*a1111.LATENT_UPSCALERS, *a1111.PIXEL_UPSCALERS)
# The web UI's img2img runs at most this fraction of the schedule (sd_samplers_common.setup_img2img_steps).
MAX_STRENGTH_FRACTION = 0.999
# torch's bicubic: Keys' cubic convolution with A = -0.75; its antialiased bicubic takes PIL's A = -0.5.
CUBIC_A = -0.75
ANTIALIAS_CUBIC_A = -0.5


@dataclass(frozen=True)
class HiresTarget:
    """Where the second pass goes: the picture (or latents) are upscaled to `upscale_to` (width, height) and
    then `truncate` (x, y) latent pixels are cut, half on each side, to crop to the size asked for."""

    upscale_to: tuple[int, int]
    truncate: tuple[int, int]

    def size(self, factor: int) -> tuple[int, int]:
        """The final image's (width, height) under a VAE of `factor`."""
        return (
            (self.upscale_to[0] // factor - self.truncate[0]) * factor,
            (self.upscale_to[1] // factor - self.truncate[1]) * factor,
        )


def check_upscaler(name: object) -> str:
    if name not in UPSCALERS:
        raise SettingsError(
            f"unknown hires upscaler {name!r}: sdrun has {', '.join(UPSCALERS)} (model upscalers such as "
            "ESRGAN are not run)"
        )
    return str(name)


def hires_target(
    width: int, height: int, scale: float, resize: tuple[int, int] | None, factor: int
) -> HiresTarget:
    """The web UI's calculate_target_resolution for a first pass of `width` x `height`: `resize` (0 for an
    automatic side) when given, else `scale` times the size; with both sides given, upscaled to cover them
    with the first pass's aspect and cropped."""
    if resize is None or resize == (0, 0):
        return HiresTarget((int(width * scale), int(height * scale)), (0, 0))
    resize_x, resize_y = resize
    if resize_y == 0:
        return HiresTarget((resize_x, resize_x * height // width), (0, 0))
    if resize_x == 0:
        return HiresTarget((resize_y * width // height, resize_y), (0, 0))
    if width / height < resize_x / resize_y:
        to = (resize_x, resize_x * height // width)
    else:
        to = (resize_y * width // height, resize_y)
    return HiresTarget(to, ((to[0] - resize_x) // factor, (to[1] - resize_y) // factor))


def second_pass_schedule(steps: int, strength: float, sampler: str) -> tuple[int, float]:
    """The web UI's hires pass runs exactly `steps` steps, the last ones of a schedule of
    int(steps / strength) steps (its img2img with the steps given): that schedule's length, and the strength
    at which sdrun's image-to-image with `sampler` (sdrun.samplers.first_step) runs `steps` of it. A sampler
    whose strength sets its timesteps (LCM, TCD) runs all its steps anyway: `steps` and `strength` as they
    are."""
    spec = SAMPLERS[sampler]
    if spec.strength_sets_timesteps:
        return steps, strength
    fraction = min(strength, MAX_STRENGTH_FRACTION)
    schedule_steps = int(steps / fraction)
    # The web UI's own samplers run one step more than int(strength * schedule) (first_step); half a step
    # above the count so that rounding cannot take one away.
    counted = steps - 1 if spec.takes_schedule_type else steps
    return schedule_steps, min((counted + 0.5) / schedule_steps, 1.0)


def truncated(latents: np.ndarray, truncate: tuple[int, int]) -> np.ndarray:
    """`latents` with `truncate` (x, y) pixels cut, the smaller half before, as the web UI cuts them."""
    x, y = truncate
    height, width = latents.shape[2], latents.shape[3]
    return latents[:, :, y // 2 : height - (y + 1) // 2, x // 2 : width - (x + 1) // 2]


def resize_latents(latents: np.ndarray, height: int, width: int, upscaler: str) -> np.ndarray:
    """[N, C, H, W] latents resized to `height` x `width` as torch.nn.functional.interpolate(mode, antialias,
    align_corners=False) does for the latent `upscaler` (sdrun.a1111.LATENT_UPSCALERS)."""
    mode, antialias = a1111.LATENT_UPSCALERS[upscaler]
    rows = _weights(latents.shape[2], height, mode, antialias)
    columns = _weights(latents.shape[3], width, mode, antialias)
    resized = np.einsum("oh,nchw,pw->ncop", rows, latents.astype(np.float64), columns, optimize=True)
    return resized.astype(np.float32)


def _weights(size: int, out: int, mode: str, antialias: bool) -> np.ndarray:
    """The [out, size] matrix that resizes one axis (each row sums to 1)."""
    if mode in ("nearest", "nearest-exact"):
        return _nearest(size, out, mode == "nearest-exact")
    if antialias:
        return _antialiased(size, out, mode)
    # Source positions in float32 with one rounding, as torch's CPU kernel computes them (a fused
    # multiply-add): positions rounded otherwise move the weights by 1e-5 on a 64-pixel side.
    scale = np.float32(size) / np.float32(out)
    source = _float32(np.float64(scale) * (np.arange(out) + 0.5) - 0.5)
    matrix = np.zeros((out, size))
    rows = np.arange(out)
    if mode == "bilinear":
        # torch clamps the linear modes' source at 0 (not the cubic one's).
        source = np.maximum(source, np.float32(0.0))
        low = np.floor(source).astype(int)
        fraction = source - low.astype(np.float32)
        high = np.minimum(low + 1, size - 1)
        np.add.at(matrix, (rows, low), np.float32(1.0) - fraction)
        np.add.at(matrix, (rows, high), fraction)
        return matrix
    low = np.floor(source).astype(int)
    t = (source - low.astype(np.float32)).astype(np.float64)
    # Taps at low - 1 .. low + 2 with Keys' weights, the indices clamped to the border (torch's access).
    for offset, distance in zip(range(-1, 3), (t + 1.0, t, 1.0 - t, 2.0 - t), strict=True):
        index = np.clip(low + offset, 0, size - 1)
        np.add.at(matrix, (rows, index), _cubic(distance, CUBIC_A))
    return matrix


def _float32(values: np.ndarray | float) -> np.ndarray:
    return np.asarray(values, dtype=np.float64).astype(np.float32)


def _nearest(size: int, out: int, exact: bool) -> np.ndarray:
    """torch's nearest (floor(dst * scale)) and nearest-exact (floor((dst + 0.5) * scale)), in float32 as
    its CPU kernel computes them, so that indices on a boundary fall the same way."""
    scale = np.float32(size) / np.float32(out)
    destination = np.arange(out, dtype=np.float32) + np.float32(0.5 if exact else 0.0)
    source = np.minimum(np.floor(destination * scale).astype(int), size - 1)
    if out == size:
        source = np.arange(out)
    elif out == 2 * size and not exact:
        source = np.arange(out) // 2
    matrix = np.zeros((out, size))
    matrix[np.arange(out), source] = 1.0
    return matrix


def _antialiased(size: int, out: int, mode: str) -> np.ndarray:
    """torch's antialiased resize (PIL's filters): a triangle (bilinear) or PIL's cubic (bicubic) filter
    stretched by the scale when shrinking, each output's weights normalized to sum to 1; in float32 where
    its CPU kernel keeps float32 (the centre, the filter's values and their sum)."""
    scale = np.float32(size) / np.float32(out)
    half_width = 1.0 if mode == "bilinear" else 2.0
    support = _float32(half_width * float(scale) if scale >= 1.0 else half_width)
    stretch = float(_float32(1.0 / float(scale))) if scale >= 1.0 else 1.0
    matrix = np.zeros((out, size))
    for index in range(out):
        center = _float32(float(scale) * (index + 0.5))
        first = max(math.trunc(float(center - support) + 0.5), 0)
        last = min(math.trunc(float(center + support) + 0.5), size)
        taps = np.arange(first, last)
        distance = (_float32(taps) - center).astype(np.float64) + 0.5
        distance = _float32(np.abs(distance * stretch)).astype(np.float64)
        if mode == "bilinear":
            weights = _float32(np.maximum(1.0 - distance, 0.0))
        else:
            weights = _float32(_cubic(distance, ANTIALIAS_CUBIC_A))
        total = np.float32(0.0)
        for weight in weights:
            total = np.float32(total + weight)
        matrix[index, first:last] = weights / total if total != 0.0 else weights
    return matrix


def _cubic(distance: np.ndarray, a: float) -> np.ndarray:
    """Keys' cubic convolution kernel at |distance| (0 beyond 2)."""
    x = np.abs(distance)
    near = ((a + 2.0) * x - (a + 3.0)) * x * x + 1.0
    far = ((x - 5.0) * x + 8.0) * x * a - 4.0 * a
    return np.where(x <= 1.0, near, np.where(x < 2.0, far, 0.0))


def picture_of(pixels: np.ndarray) -> Image.Image:
    """A decoded [1, 3, H, W] array in [-1, 1] as the web UI turns it into a picture before upscaling it:
    clamped to [0, 1], times 255, truncated to 8 bits."""
    array = np.clip((pixels[0] + 1.0) / 2.0, 0.0, 1.0)
    return Image.fromarray((255.0 * np.moveaxis(array, 0, 2)).astype(np.uint8))


def upscale_picture(image: Image.Image, width: int, height: int, upscaler: str) -> Image.Image:
    """`image` resized to `width` x `height` by the pixel `upscaler`, as the web UI's images.resize_image
    (resize mode 0, "just resize") runs it: "None" is one Lanczos resize; "Lanczos" and "Nearest" scale by
    the larger ratio with their filter to sizes truncated to whole pixels, then Lanczos to a multiple of 8
    and to the size asked for, where they differ."""
    scale = max(width / image.width, height / image.height)
    if upscaler != "None" and scale > 1.0:
        resample = Image.Resampling.NEAREST if upscaler == "Nearest" else Image.Resampling.LANCZOS
        multiple_of_8 = (int(image.width * scale // 8 * 8), int(image.height * scale // 8 * 8))
        image = image.resize((int(image.width * scale), int(image.height * scale)), resample=resample)
        if image.size != multiple_of_8:
            image = image.resize(multiple_of_8, resample=Image.Resampling.LANCZOS)
    if image.size != (width, height):
        image = image.resize((width, height), resample=Image.Resampling.LANCZOS)
    return image


def upscale_first_pass(
    latents: np.ndarray,
    target: HiresTarget,
    upscaler: str,
    factor: int,
    decode: Callable[[np.ndarray], np.ndarray],
    encode: Callable[[Image.Image], np.ndarray],
) -> np.ndarray:
    """The first pass's (scaled) `latents` upscaled to `target` by `upscaler` and cropped: resized in latent
    space, or `decode`d to pixels in [-1, 1], resized as a picture and `encode`d again to scaled latents
    (sdrun takes the encoder's mean: see the module's docstring). A picture whose target side is not a
    multiple of `factor` loses its last pixels before encoding, which the web UI's encoder drops too."""
    width, height = target.upscale_to
    if upscaler in a1111.LATENT_UPSCALERS:
        upscaled = resize_latents(latents, height // factor, width // factor, upscaler)
    else:
        picture = upscale_picture(picture_of(decode(latents)), width, height, upscaler)
        upscaled = encode(picture.crop((0, 0, width // factor * factor, height // factor * factor)))
    return truncated(upscaled, target.truncate)
