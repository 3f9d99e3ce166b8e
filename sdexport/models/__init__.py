"""Stable Diffusion 1.x and 2.x networks written from scratch, named as in the original checkpoints."""

from sdexport.models.clip import CLIPTextConfig, CLIPTextModel
from sdexport.models.open_clip import OpenCLIPTextConfig, OpenCLIPTextModel
from sdexport.models.stable_diffusion import StableDiffusion, StableDiffusionConfig
from sdexport.models.unet import UNetConfig, UNetModel
from sdexport.models.vae import AutoencoderKL, VAEConfig

__all__ = [
    "AutoencoderKL",
    "CLIPTextConfig",
    "CLIPTextModel",
    "OpenCLIPTextConfig",
    "OpenCLIPTextModel",
    "StableDiffusion",
    "StableDiffusionConfig",
    "UNetConfig",
    "UNetModel",
    "VAEConfig",
]
