"""Helpers of the checkpoint tests: random-weight models in two small shapes."""

import torch
from torch import nn

from sdexport.models import StableDiffusion, StableDiffusionConfig, UNetConfig, VAEConfig


def random_model(config: StableDiffusionConfig, seed: int = 0) -> StableDiffusion:
    """StableDiffusion(config) with random weights, norm affines included, so a swapped tensor shows."""
    torch.manual_seed(seed)
    model = StableDiffusion(config).eval()
    with torch.no_grad():
        for layer in model.modules():
            if isinstance(layer, nn.GroupNorm | nn.LayerNorm):
                layer.weight.normal_(1.0, 0.2)
                layer.bias.normal_(0.0, 0.2)
    return model


# A second small shape: one res block per level, deeper transformers, attention at other levels.
VARIANT = StableDiffusionConfig(
    unet=UNetConfig(
        model_channels=16,
        channel_mult=(1, 2, 3),
        attention_resolutions=(2, 4),
        num_res_blocks=1,
        num_heads=2,
        transformer_depth=2,
        context_dim=32,
        norm_groups=4,
    ),
    vae=VAEConfig(ch=16, ch_mult=(1, 2, 3), num_res_blocks=2, norm_groups=4),
    text_encoder=StableDiffusionConfig.tiny().text_encoder,
)
