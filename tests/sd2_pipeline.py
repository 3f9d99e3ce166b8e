"""A tiny random-weight SD 2.x pipeline as diffusers and transformers build it, with stabilityai's SD 2.x
settings: a UNet with linear projections and heads of a fixed width (per-block `attention_head_dim`), a
GELU CLIPTextModel holding the `layers - 1` OpenCLIP blocks that SD 2.x runs, a tokenizer that pads with
"!" (id 0), and a v-prediction schedule."""

import tempfile
from pathlib import Path

import torch
import transformers
from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
from torch import nn

from sdexport.export.tokenizer_files import write_tokenizer

# The latent side of its UNet config, which sdrun takes as its default size (x8 pixels).
SAMPLE_SIZE = 12


def randomize(module: nn.Module, seed: int) -> nn.Module:
    """Random weights everywhere, biases and norm affines included (diffusers zero-inits some layers)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in module.named_parameters():
            scale = 1.0 / max(1, param[0].numel()) ** 0.5 if param.ndim > 1 else 0.2
            offset = 1.0 if name.endswith("weight") and param.ndim == 1 else 0.0
            param.copy_(offset + scale * torch.randn(param.shape, generator=generator))
    return module.eval()


def tiny_sd2_pipeline(prediction_type: str = "v_prediction") -> StableDiffusionPipeline:
    unet = UNet2DConditionModel(
        sample_size=SAMPLE_SIZE,
        block_out_channels=(32, 64, 64),
        layers_per_block=2,
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=32,
        attention_head_dim=[4, 8, 8],  # diffusers' name for the number of heads: 8 channels each
        use_linear_projection=True,
        norm_num_groups=8,
    )
    vae = AutoencoderKL(
        block_out_channels=(8, 8, 16, 16),
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        latent_channels=4,
        layers_per_block=1,
        norm_num_groups=4,
    )
    text_config = transformers.CLIPTextConfig(
        vocab_size=49408,
        hidden_size=32,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=2,
        max_position_embeddings=77,
        hidden_act="gelu",
        bos_token_id=0,
        eos_token_id=2,
        pad_token_id=1,
    )
    text_encoder = transformers.CLIPTextModel(text_config)
    with tempfile.TemporaryDirectory() as tokenizer_dir:
        write_tokenizer(Path(tokenizer_dir))
        # SD 2.x's tokenizer: CLIP's, padding with "!" (stabilityai/stable-diffusion-2-1's pad_token).
        tokenizer = transformers.CLIPTokenizer.from_pretrained(tokenizer_dir, pad_token="!")
    scheduler = DDIMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
        # Written out: from_config would give a scheduler built from this one its own default spacing.
        timestep_spacing="leading",
        prediction_type=prediction_type,
    )
    return StableDiffusionPipeline(
        unet=randomize(unet, 1),
        vae=randomize(vae, 2),
        text_encoder=randomize(text_encoder, 3),
        tokenizer=tokenizer,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )


def save_without_tokenizer(pipeline: StableDiffusionPipeline, folder: Path) -> None:
    """The pipeline as a diffusers folder, but for its tokenizer: an exporter must then write its own."""
    pipeline.save_pretrained(folder)
    for path in sorted((folder / "tokenizer").iterdir()):
        path.unlink()
    (folder / "tokenizer").rmdir()
