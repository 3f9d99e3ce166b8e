"""Tiny random-weight Stable Diffusion pipelines as diffusers and transformers build them, and the parts
the SD 1.x and SD 2.x ones share (tests/sd2_pipeline.py): the VAE, SD's training schedule, CLIP's
tokenizer. Imports torch: conftest.py imports it inside its fixtures only."""

import tempfile
from pathlib import Path

import torch
from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
from torch import nn
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

from sdexport.export.tokenizer_files import write_tokenizer

# The tiny UNet of SD 1.x shapes (64x64 pixels, two levels), as UNet2DConditionModel's arguments.
TINY_UNET: dict[str, object] = {
    "sample_size": 8,
    "block_out_channels": (32, 64),
    "layers_per_block": 1,
    "down_block_types": ("CrossAttnDownBlock2D", "DownBlock2D"),
    "up_block_types": ("UpBlock2D", "CrossAttnUpBlock2D"),
    "cross_attention_dim": 32,
    "attention_head_dim": 4,
    "norm_num_groups": 8,
}


def randomize(module: nn.Module, seed: int) -> nn.Module:
    """Random weights everywhere, biases and norm affines included (diffusers zero-inits some layers)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in module.named_parameters():
            scale = 1.0 / max(1, param[0].numel()) ** 0.5 if param.ndim > 1 else 0.2
            offset = 1.0 if name.endswith("weight") and param.ndim == 1 else 0.0
            param.copy_(offset + scale * torch.randn(param.shape, generator=generator))
    return module.eval()


def tiny_vae() -> AutoencoderKL:
    return AutoencoderKL(
        block_out_channels=(8, 8, 16, 16),
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        latent_channels=4,
        layers_per_block=1,
        norm_num_groups=4,
    )


def sd_scheduler(**settings: object) -> DDIMScheduler:
    """SD's training schedule; clip_sample written out, since diffusers' DDIM defaults it to True."""
    return DDIMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
        **settings,
    )


def clip_tokenizer(**settings: object) -> CLIPTokenizer:
    """CLIP's tokenizer as sdexport writes it, read by transformers."""
    with tempfile.TemporaryDirectory() as tokenizer_dir:
        write_tokenizer(Path(tokenizer_dir))
        return CLIPTokenizer.from_pretrained(tokenizer_dir, **settings)


def pipeline_of(
    unet: UNet2DConditionModel,
    vae: AutoencoderKL,
    text_encoder: CLIPTextModel,
    tokenizer: CLIPTokenizer,
    scheduler: DDIMScheduler,
) -> StableDiffusionPipeline:
    return StableDiffusionPipeline(
        unet=unet,
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )


def build_tiny_diffusers_pipeline(folder: Path) -> None:
    """A diffusers StableDiffusionPipeline with tiny random weights (SD 1.x shapes, 64x64 pixels), saved."""
    torch.manual_seed(0)
    unet = UNet2DConditionModel(**TINY_UNET)
    vae = tiny_vae()
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=49408,
            hidden_size=32,
            intermediate_size=37,
            num_attention_heads=4,
            num_hidden_layers=2,
            max_position_embeddings=77,
            bos_token_id=49406,
            eos_token_id=49407,
        )
    )
    pipeline_of(unet, vae, text_encoder, clip_tokenizer(), sd_scheduler()).save_pretrained(folder)
