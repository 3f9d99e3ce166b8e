"""A tiny random-weight inpainting model (UNet with 9 input channels: latents, mask, masked-image latents)
as diffusers saves it, built from the tiny pipeline of tests/conftest.py, and test pictures for it."""

from pathlib import Path

import numpy as np
import torch
from diffusers import StableDiffusionInpaintPipeline, StableDiffusionPipeline, UNet2DConditionModel
from PIL import Image


def build_tiny_inpainting_pipeline(tiny_diffusers_dir: Path, folder: Path) -> None:
    """The tiny pipeline with a fresh random UNet of 9 input channels, saved as diffusers'
    StableDiffusionInpaintPipeline (its model_index names that class)."""
    source = StableDiffusionPipeline.from_pretrained(tiny_diffusers_dir)
    torch.manual_seed(1)
    unet = UNet2DConditionModel.from_config({**source.unet.config, "in_channels": 9})
    components = {**source.components, "unet": unet}
    StableDiffusionInpaintPipeline(**components).save_pretrained(folder)


def init_picture(size: int) -> Image.Image:
    """A smooth picture with an edge in it, so the VAE encoder sees structure."""
    y, x = np.mgrid[0:size, 0:size] / size
    rgb = np.stack([x, y, ((x - 0.5) ** 2 + (y - 0.5) ** 2 < 0.1).astype(float)], axis=-1)
    return Image.fromarray((rgb * 255).astype(np.uint8))


def box_mask(size: int, box: tuple[float, float, float, float] = (0.2, 0.3, 0.7, 0.65)) -> Image.Image:
    """White (repaint) inside `box` (fractions of the side: left, top, right, bottom), black elsewhere."""
    mask = np.zeros((size, size), dtype=np.uint8)
    left, top, right, bottom = (round(f * size) for f in box)
    mask[top:bottom, left:right] = 255
    return Image.fromarray(mask, mode="L")
