"""Independent references for the scratch models: diffusers' and transformers' networks, loaded with our
weights through diffusers' own single-file (original-checkpoint) conversion.

The diffusers configs are derived by diffusers itself (`create_*_diffusers_config_from_ldm`) from the
original `v1-inference.yaml` layout of our config; only `norm_num_groups`, which the original hard-codes
to 32 and diffusers therefore never reads, is set here.
"""

import diffusers
import torch
import transformers
from diffusers.loaders import single_file_utils as sfu
from torch import Tensor, nn

from sdexport.models import CLIPTextConfig, StableDiffusionConfig


def rel_err(ours: Tensor, ref: Tensor) -> float:
    """||ours - ref|| / ||ref||."""
    return ((ours - ref).norm() / ref.norm()).item()


def randomize_norms(module: nn.Module, generator: torch.Generator) -> None:
    """Give every norm layer a non-trivial affine, so that a swapped or missing norm weight shows."""
    with torch.no_grad():
        for layer in module.modules():
            if isinstance(layer, nn.GroupNorm | nn.LayerNorm):
                layer.weight.copy_(1 + 0.2 * torch.randn(layer.weight.shape, generator=generator))
                layer.bias.copy_(0.2 * torch.randn(layer.bias.shape, generator=generator))


def original_config(config: StableDiffusionConfig) -> dict:
    """Our config in the layout of the original `v1-inference.yaml`."""
    unet, vae = config.unet, config.vae
    return {
        "model": {
            "params": {
                "scale_factor": vae.scaling_factor,
                "unet_config": {
                    "params": {
                        "in_channels": unet.in_channels,
                        "out_channels": unet.out_channels,
                        "model_channels": unet.model_channels,
                        "attention_resolutions": list(unet.attention_resolutions),
                        "num_res_blocks": unet.num_res_blocks,
                        "channel_mult": list(unet.channel_mult),
                        "num_heads": unet.num_heads,
                        "transformer_depth": unet.transformer_depth,
                        "context_dim": unet.context_dim,
                    }
                },
                "first_stage_config": {
                    "params": {
                        "embed_dim": vae.embed_dim,
                        "ddconfig": {
                            "double_z": True,
                            "z_channels": vae.z_channels,
                            "in_channels": vae.in_channels,
                            "out_ch": vae.out_channels,
                            "ch": vae.ch,
                            "ch_mult": list(vae.ch_mult),
                            "num_res_blocks": vae.num_res_blocks,
                            "attn_resolutions": [],
                        },
                    }
                },
            }
        }
    }


def _loaded(model: nn.Module, state_dict: dict[str, Tensor]) -> nn.Module:
    model.load_state_dict(state_dict, strict=True)
    return model.eval()


def diffusers_unet_config(config: StableDiffusionConfig, checkpoint: dict[str, Tensor]) -> dict:
    unet_config = sfu.create_unet_diffusers_config_from_ldm(original_config(config), checkpoint)
    unet_config["norm_num_groups"] = config.unet.norm_groups
    return unet_config


def diffusers_vae_config(config: StableDiffusionConfig, checkpoint: dict[str, Tensor]) -> dict:
    vae_config = sfu.create_vae_diffusers_config_from_ldm(original_config(config), checkpoint)
    vae_config["norm_num_groups"] = config.vae.norm_groups
    return vae_config


def transformers_clip_config(config: CLIPTextConfig) -> transformers.CLIPTextConfig:
    return transformers.CLIPTextConfig(
        vocab_size=config.vocab_size,
        max_position_embeddings=config.max_position_embeddings,
        hidden_size=config.hidden_size,
        intermediate_size=config.intermediate_size,
        num_hidden_layers=config.num_hidden_layers,
        num_attention_heads=config.num_attention_heads,
        layer_norm_eps=config.layer_norm_eps,
        hidden_act="quick_gelu",
        bos_token_id=49406,
        eos_token_id=49407,
    )


def diffusers_unet(
    config: StableDiffusionConfig, checkpoint: dict[str, Tensor]
) -> diffusers.UNet2DConditionModel:
    """diffusers' UNet holding the `model.diffusion_model.*` weights of an original-layout checkpoint."""
    unet_config = diffusers_unet_config(config, checkpoint)
    converted = sfu.convert_ldm_unet_checkpoint(checkpoint, unet_config)
    return _loaded(diffusers.UNet2DConditionModel(**unet_config), converted)


def diffusers_vae(config: StableDiffusionConfig, checkpoint: dict[str, Tensor]) -> diffusers.AutoencoderKL:
    """diffusers' AutoencoderKL holding the `first_stage_model.*` weights of an original-layout checkpoint."""
    vae_config = diffusers_vae_config(config, checkpoint)
    converted = sfu.convert_ldm_vae_checkpoint(checkpoint, vae_config)
    return _loaded(diffusers.AutoencoderKL(**vae_config), converted)


def transformers_clip(config: CLIPTextConfig, checkpoint: dict[str, Tensor]) -> transformers.CLIPTextModel:
    """transformers' CLIPTextModel holding the `cond_stage_model.transformer.*` weights."""
    clip_config = transformers_clip_config(config)
    converted = sfu.convert_ldm_clip_checkpoint(checkpoint)
    return _loaded(transformers.CLIPTextModel(clip_config), converted)


def sd_token_ids(lengths: list[int], max_length: int, generator: torch.Generator) -> Tensor:
    """Rows shaped like the CLIP tokenizer's output: start, `n` word ids, end, padded with the end id."""
    start, end = 49406, 49407
    rows = []
    for n in lengths:
        words = torch.randint(0, start, (n,), generator=generator).tolist()
        rows.append([start, *words] + [end] * (max_length - n - 1))
    return torch.tensor(rows)
