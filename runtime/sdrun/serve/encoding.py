"""Images in and out of HTTP bodies: PNGs carrying their `parameters` chunk, uploaded or base64 init images
and masks opened through the library's one gate (sdrun.images.open_image) with the pipeline's pixel limit,
and masks of the opposite polarity turned into the library's (white = repaint).

The routes call the async functions here: base64, opening an image and PNG encoding run in a worker thread,
since the event loop serves every other request (/health included) while one body's images are converted
(sixteen PNGs at 1024x1024 took the loop for seconds)."""

import base64
import binascii
import io
from collections.abc import Callable

from PIL import Image, ImageOps
from starlette.concurrency import run_in_threadpool

from sdrun.errors import SettingsError
from sdrun.images import decode_upright, open_image
from sdrun.png_files import png_bytes
from sdrun.results import GeneratedImage
from sdrun.settings import ImageSettings


class _Upload(io.BytesIO):
    """Bytes that name themselves in the library's messages ("cannot read init image init_images[0]")."""

    def __init__(self, data: bytes, name: str) -> None:
        super().__init__(data)
        self.label = name

    def __str__(self) -> str:
        return self.label

    __repr__ = __str__  # PIL's messages show the file's repr


async def pngs_base64(images: list[GeneratedImage]) -> list[str]:
    """Each image as `png_base64`, encoded in a worker thread."""
    return await run_in_threadpool(lambda: [png_base64(made.image, made.settings) for made in images])


def png_base64(image: Image.Image, settings: ImageSettings) -> str:
    """The image as a base64 PNG whose `parameters` chunk reproduces it (as A1111's API returns them)."""
    return base64.b64encode(png_bytes(image, settings)).decode("ascii")


async def image_from_bytes(data: bytes, name: str, max_pixels: int, what: str = "init image") -> Image.Image:
    """An uploaded image, opened (in a worker thread) but not decoded, refused above `max_pixels` (a
    decompression bomb); `what` says in errors which image it is (an init image, a mask)."""
    return await run_in_threadpool(_open_bytes, data, name, max_pixels, what)


async def image_from_base64(text: str, name: str, max_pixels: int, what: str = "init image") -> Image.Image:
    """A base64 image (a `data:image/...;base64,` URL too, as browsers send them), decoded from base64 and
    opened in a worker thread."""
    return await run_in_threadpool(_open_base64, text, name, max_pixels, what)


def _open_bytes(data: bytes, name: str, max_pixels: int, what: str) -> Image.Image:
    return open_image(_Upload(data, name), max_pixels, what)  # type: ignore[arg-type]  # PIL opens files


def _open_base64(text: str, name: str, max_pixels: int, what: str) -> Image.Image:
    if text.startswith("data:"):
        text = text.partition(",")[2]
    try:
        data = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as error:
        raise SettingsError(f"{name} is not base64 image data") from error
    return _open_bytes(data, name, max_pixels, what)


async def inverted_mask(mask: Image.Image, channel: Callable[[Image.Image], Image.Image]) -> Image.Image:
    """The opened `mask` decoded upright to the 8-bit band `channel` reads from it, then inverted: a mask
    whose white marks what to keep, as the library's white = repaint. Decoded in a worker thread, as a mask
    as large as the pixel limit allows takes a while and the event loop serves every other request."""

    def decode() -> Image.Image:
        return ImageOps.invert(decode_upright(mask, mask.size, channel, "mask"))

    return await run_in_threadpool(decode)
