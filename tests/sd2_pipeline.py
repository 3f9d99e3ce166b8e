"""A tiny random-weight SD 2.x pipeline as diffusers and transformers build it, with stabilityai's SD 2.x
settings: a UNet with linear projections and heads of a fixed width (per-block `attention_head_dim`), a
GELU CLIPTextModel holding the `layers - 1` OpenCLIP blocks that SD 2.x runs, a tokenizer that pads with
"!" (id 0), and a v-prediction schedule."""

from pathlib import Path

import transformers
from diffusers import StableDiffusionPipeline, UNet2DConditionModel
from tiny_diffusers import clip_tokenizer, pipeline_of, randomize, sd_scheduler, tiny_vae

# The latent side of its UNet config, which sdrun takes as its default size (x8 pixels).
SAMPLE_SIZE = 12


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
    # SD 2.x's tokenizer: CLIP's, padding with "!" (stabilityai/stable-diffusion-2-1's pad_token).
    tokenizer = clip_tokenizer(pad_token="!")
    # The spacing written out: from_config would give a scheduler built from this one its own default.
    scheduler = sd_scheduler(timestep_spacing="leading", prediction_type=prediction_type)
    unet, vae, text_encoder = randomize(unet, 1), randomize(tiny_vae(), 2), randomize(text_encoder, 3)
    return pipeline_of(unet, vae, text_encoder, tokenizer, scheduler)


def save_without_tokenizer(pipeline: StableDiffusionPipeline, folder: Path) -> None:
    """The pipeline as a diffusers folder, but for its tokenizer: an exporter must then write its own."""
    pipeline.save_pretrained(folder)
    for path in sorted((folder / "tokenizer").iterdir()):
        path.unlink()
    (folder / "tokenizer").rmdir()
