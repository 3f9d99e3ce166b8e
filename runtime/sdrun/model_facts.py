"""What a model folder says about its model, read once when it is opened: the latent space (scale, channels,
the VAE's downsampling), the sizes it takes, its CLIP skip, whether its UNet takes the guidance scale as an
input (LCM) or inpaints, which VAE graphs decode and encode, and whether its tokenizer fits its text
encoder.

Every value comes from a folder that may be a stranger's: each is read typed and ranged (sdrun.config_values).
"""

from dataclasses import dataclass
from typing import Any

from sdrun.config_values import real_number, whole_number, whole_numbers
from sdrun.defaults import VAE_CHOICES
from sdrun.errors import ModelFolderError, SettingsError
from sdrun.folder import ModelFolder
from sdrun.folder_layout import (
    GRAPH_FILE,
    TEXT_ENCODER,
    TINY_VAE_DECODER,
    TINY_VAE_ENCODER,
    UNET,
    VAE_DECODER,
    VAE_ENCODER,
)

# The size of a folder whose UNet config gives none.
FALLBACK_SIZE = 512
# A UNet sample_size above this (2048 pixels for SD's VAE) is not a Stable Diffusion config.
MAX_SAMPLE_SIZE = 256
_DECODER_CONFIG = f"{VAE_DECODER}/config.json"
_UNET_CONFIG = f"{UNET}/config.json"
_TEXT_ENCODER_CONFIG = f"{TEXT_ENCODER}/config.json"


@dataclass(frozen=True)
class ModelFacts:
    """`latent_scale`: the VAE's scaling factor; `vae_factor`: its downsampling; `size_multiple`: what image
    sides must be multiples of (the VAE's factor times the UNet's latent multiple); `default_size`: the
    UNet's sample size in pixels; `guidance_embedding_dim`: the width of an LCM UNet's guidance input (None
    for classifier-free guidance); `inpainting`: a UNet that takes the mask and masked image's latents;
    `vae_decoder` and `vae_encoder`: the graphs of the VAE chosen."""

    latent_scale: float
    latent_channels: int
    vae_factor: int
    size_multiple: int
    default_size: int
    clip_skip: int
    guidance_embedding_dim: int | None
    inpainting: bool
    vae_decoder: str
    vae_encoder: str

    @classmethod
    def read(cls, folder: ModelFolder, vae: str, token_length: int) -> "ModelFacts":
        """The facts of `folder` with the VAE `vae` ("full" or "tiny"), for a tokenizer of `token_length`."""
        decoder_graph, encoder_graph = _vae_graphs(folder, vae)
        _check_token_length(token_length, folder.config(TEXT_ENCODER))
        decoder = folder.config(VAE_DECODER)
        latent_scale = real_number(decoder, "scaling_factor", _DECODER_CONFIG, 0.0, 1e3, open_low=True)
        downsamplings = len(whole_numbers(decoder, "block_out_channels", _DECODER_CONFIG, 1, 2**16, 8)) - 1
        vae_factor = 2**downsamplings
        channels = whole_number(decoder, "latent_channels", _DECODER_CONFIG, 1, 1024)
        unet = folder.config(UNET)
        latent_multiple = folder.facts.latent_multiple
        if latent_multiple is None:
            # optimum's UNet graphs upsample by fixed factors of 2: each downsampling must divide evenly.
            blocks = whole_numbers(unet, "block_out_channels", _UNET_CONFIG, 1, 2**16, 8)
            latent_multiple = 2 ** (len(blocks) - 1)
        sample_size = whole_number(unet, "sample_size", _UNET_CONFIG, 1, MAX_SAMPLE_SIZE, None)
        # An inpainting UNet takes the mask and the masked image's latents after the latents' channels.
        in_channels = whole_number(unet, "in_channels", _UNET_CONFIG, 1, 1024, channels)
        inpainting_channels = 2 * channels + 1
        if in_channels not in (channels, inpainting_channels):
            raise ModelFolderError(
                f"{_UNET_CONFIG}: in_channels {in_channels} is neither the latent channels ({channels}) "
                f"nor an inpainting UNet's ({inpainting_channels}); sdrun cannot run this UNet"
            )
        return cls(
            latent_scale=latent_scale,
            latent_channels=channels,
            vae_factor=vae_factor,
            size_multiple=vae_factor * latent_multiple,
            default_size=sample_size * vae_factor if sample_size is not None else FALLBACK_SIZE,
            # Baked into the text encoder graph; known here only to be written into each PNG.
            clip_skip=folder.facts.clip_skip,
            # Read from the config so that it is known before the UNet opens (sdrun.guidance_embedding).
            guidance_embedding_dim=whole_number(unet, "time_cond_proj_dim", _UNET_CONFIG, 4, 2**16, None),
            inpainting=in_channels == inpainting_channels,
            vae_decoder=decoder_graph,
            vae_encoder=encoder_graph,
        )

    def latent_shape(self, width: int, height: int) -> tuple[int, int, int, int]:
        """The shape of one image's latents."""
        return (1, self.latent_channels, height // self.vae_factor, width // self.vae_factor)


def _check_token_length(token_length: int, encoder_config: dict[str, Any]) -> None:
    """Refuse a tokenizer whose model_max_length the text encoder has no positions for: it would fail
    inside onnxruntime at the first prompt instead of when the folder opens."""
    positions = whole_number(encoder_config, "max_position_embeddings", _TEXT_ENCODER_CONFIG, 1, 2**20, None)
    if positions is not None and token_length > positions:
        raise ModelFolderError(
            f"tokenizer/tokenizer_config.json: model_max_length {token_length} is more than the "
            f"{positions} positions of the text encoder ({_TEXT_ENCODER_CONFIG}); set it to {positions} or "
            "export the model folder again"
        )


def _vae_graphs(folder: ModelFolder, vae: str) -> tuple[str, str]:
    """The decoder and encoder graphs of `vae`; the tiny decoder goes with the full encoder when the
    folder has no tiny one (image-to-image only)."""
    if vae not in VAE_CHOICES:
        raise SettingsError(f"vae {vae!r}: choose one of {', '.join(VAE_CHOICES)}")
    if vae == "full":
        return VAE_DECODER, VAE_ENCODER
    if not folder.has(f"{TINY_VAE_DECODER}/{GRAPH_FILE}"):
        raise SettingsError(
            f"model folder {folder.path} has no tiny VAE ({TINY_VAE_DECODER}); build one with "
            "`sdexport build SOURCE --tiny-vae taesd_decoder.safetensors`, or use the full VAE"
        )
    encoder = TINY_VAE_ENCODER if folder.has(f"{TINY_VAE_ENCODER}/{GRAPH_FILE}") else VAE_ENCODER
    return TINY_VAE_DECODER, encoder
