"""TAESD, the tiny autoencoder distilled from SD's VAE (Ollin Boer Bohan, github.com/madebyollin/taesd).

About 1.2 M parameters a half against the full VAE's 34 M (encoder) and 49 M (decoder): plain 3x3
convolutions and ReLUs, no normalization, no attention. The encoder and the decoder are each an
`nn.Sequential` laid out as in madebyollin's `taesd.py`, so the keys of `taesd_decoder` and
`taesd_encoder` files (`1.weight`, `3.conv.0.weight`, ...) are this module's own.

Conventions (madebyollin's; diffusers' AutoencoderTiny wraps the same layers differently):
- latents are the diffusion model's latents, i.e. the SD VAE's latents already multiplied by its scaling
  factor (0.18215 for SD 1.x): TAESD has no scaling factor of its own (diffusers writes 1.0);
- images are in [0, 1] (encoder input, decoder output; the decoder's output is not clamped);
  diffusers' AutoencoderTiny takes and gives [-1, 1] and converts at its edges;
- `latent_magnitude` 3 and `latent_shift` 0.5 of diffusers' config only map latents to [0, 1] to store
  them as PNG pixels; neither network uses them.
"""

from dataclasses import dataclass

import torch
from torch import Tensor, nn


@dataclass
class TAESDConfig:
    image_channels: int = 3
    latent_channels: int = 4
    channels: int = 64
    # Blocks per resolution, highest resolution first for the encoder and last for the decoder.
    encoder_blocks: tuple[int, ...] = (1, 3, 3, 3)
    decoder_blocks: tuple[int, ...] = (3, 3, 3, 1)

    @property
    def downsampling(self) -> int:
        """Image pixels per latent pixel along each side."""
        return 2 ** (len(self.decoder_blocks) - 1)


def _conv(in_channels: int, out_channels: int, **kwargs: object) -> nn.Conv2d:
    return nn.Conv2d(in_channels, out_channels, 3, padding=1, **kwargs)


class Clamp(nn.Module):
    """A soft clamp of the latents to (-3, 3) before decoding."""

    def forward(self, x: Tensor) -> Tensor:
        return torch.tanh(x / 3) * 3


class Block(nn.Module):
    """Three convolutions with ReLUs between, added to the input, then a ReLU."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.conv = nn.Sequential(
            _conv(in_channels, out_channels),
            nn.ReLU(),
            _conv(out_channels, out_channels),
            nn.ReLU(),
            _conv(out_channels, out_channels),
        )
        self.skip = (
            nn.Conv2d(in_channels, out_channels, 1, bias=False)
            if in_channels != out_channels
            else nn.Identity()
        )
        self.fuse = nn.ReLU()

    def forward(self, x: Tensor) -> Tensor:
        return self.fuse(self.conv(x) + self.skip(x))


class TAESDEncoder(nn.Sequential):
    """Image [B, 3, H, W] in [0, 1] -> latents [B, 4, H/8, W/8] (the diffusion model's scale)."""

    def __init__(self, config: TAESDConfig):
        c = config.channels
        layers: list[nn.Module] = []
        for level, blocks in enumerate(config.encoder_blocks):
            # Each level after the first halves the resolution with a strided convolution.
            layers.append(
                _conv(config.image_channels, c) if level == 0 else _conv(c, c, stride=2, bias=False)
            )
            layers.extend(Block(c, c) for _ in range(blocks))
        layers.append(_conv(c, config.latent_channels))
        super().__init__(*layers)


class TAESDDecoder(nn.Sequential):
    """Latents [B, 4, h, w] (the diffusion model's scale) -> image [B, 3, 8h, 8w] in about [0, 1]."""

    def __init__(self, config: TAESDConfig):
        c = config.channels
        layers: list[nn.Module] = [Clamp(), _conv(config.latent_channels, c), nn.ReLU()]
        for level, blocks in enumerate(config.decoder_blocks):
            layers.extend(Block(c, c) for _ in range(blocks))
            if level < len(config.decoder_blocks) - 1:
                layers += [nn.Upsample(scale_factor=2, mode="nearest"), _conv(c, c, bias=False)]
        layers.append(_conv(c, config.image_channels))
        super().__init__(*layers)


class TAESD(nn.Module):
    """The decoder, and the encoder when there is one (decoder-only files are the common case)."""

    def __init__(self, config: TAESDConfig, with_encoder: bool = True):
        super().__init__()
        self.config = config
        self.decoder = TAESDDecoder(config)
        self.encoder = TAESDEncoder(config) if with_encoder else None
