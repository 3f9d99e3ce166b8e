"""What a generation call gives back: each image with the settings that reproduce it."""

from dataclasses import dataclass

from PIL import Image

from sdrun.settings import ImageSettings


@dataclass(frozen=True)
class Result:
    """The images of one `generate` call and, per image, the settings that reproduce it.

    `stopped` is True when the callback stopped the run: the last image is then decoded from the
    latents it had reached, and no later image was started.
    """

    images: list[Image.Image]
    settings: list[ImageSettings]
    stopped: bool = False


@dataclass(frozen=True)
class GeneratedImage:
    """One image of `Pipeline.generate_each`; `stopped`: the callback stopped the run during it."""

    image: Image.Image
    settings: ImageSettings
    stopped: bool = False
