"""Images in and out of HTTP bodies: PNGs carrying their `parameters` chunk, and uploaded or base64 init
images opened through the library's one gate (sdrun.images.open_image) with the pipeline's pixel limit."""

import base64
import binascii
import io

from PIL import Image, PngImagePlugin

from sdrun.errors import SettingsError
from sdrun.images import open_image
from sdrun.png_info import PARAMETERS_KEY, format_parameters
from sdrun.settings import ImageSettings


class _Upload(io.BytesIO):
    """Bytes that name themselves in the library's messages ("cannot read init image init_images[0]")."""

    def __init__(self, data: bytes, name: str) -> None:
        super().__init__(data)
        self.label = name

    def __str__(self) -> str:
        return self.label

    __repr__ = __str__  # PIL's messages show the file's repr


def png_base64(image: Image.Image, settings: ImageSettings) -> str:
    """The image as a base64 PNG whose `parameters` chunk reproduces it (as A1111's API returns them)."""
    info = PngImagePlugin.PngInfo()
    info.add_text(PARAMETERS_KEY, format_parameters(settings))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", pnginfo=info)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def image_from_bytes(data: bytes, name: str, max_pixels: int) -> Image.Image:
    """An uploaded image, opened but not decoded, refused above `max_pixels` (a decompression bomb)."""
    return open_image(_Upload(data, name), max_pixels)  # type: ignore[arg-type]  # PIL opens file objects


def image_from_base64(text: str, name: str, max_pixels: int) -> Image.Image:
    """A base64 image (a `data:image/...;base64,` URL too, as browsers send them)."""
    if text.startswith("data:"):
        text = text.partition(",")[2]
    try:
        data = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as error:
        raise SettingsError(f"{name} is not base64 image data") from error
    return image_from_bytes(data, name, max_pixels)
