"""Independent references for the SD 2.x networks: transformers' CLIPTextModel and diffusers' UNet, loaded
with original-layout SD 2.x weights through diffusers' own single-file conversion
(convert_open_clip_checkpoint, convert_ldm_unet_checkpoint with the config that diffusers derives from
the `v2-inference.yaml` layout)."""

import diffusers
import torch
import transformers
from diffusers.loaders import single_file_utils as sfu
from sd_reference import original_config, randomize_norms
from torch import Tensor

from sdexport.models import OpenCLIPTextConfig, StableDiffusion, StableDiffusionConfig

OPEN_CLIP = "cond_stage_model.model."


def sd2_original_config(config: StableDiffusionConfig) -> dict:
    """Our SD 2.x config in the layout of the original `v2-inference(-v).yaml`."""
    document = original_config(config)
    unet = document["model"]["params"]["unet_config"]["params"]
    del unet["num_heads"]
    unet.update(num_head_channels=config.unet.num_head_channels, use_linear_in_transformer=True)
    return document


def tiny_sd2(seed: int = 0) -> StableDiffusion:
    """The tiny SD 2.x-shaped model with random weights (norm affines included)."""
    torch.manual_seed(seed)
    model = StableDiffusion(StableDiffusionConfig.tiny_sd2()).eval()
    randomize_norms(model, torch.Generator().manual_seed(seed + 1))
    return model


def full_checkpoint(model: StableDiffusion, seed: int = 2) -> dict[str, Tensor]:
    """`model`'s weights as a real SD 2.x file holds them: with the text model's last block (which SD 2.x
    does not run), its text_projection and logit_scale."""
    config = model.config.text_encoder
    assert isinstance(config, OpenCLIPTextConfig)
    state = dict(model.state_dict())
    generator = torch.Generator().manual_seed(seed)
    last = f"{OPEN_CLIP}transformer.resblocks.{config.layers - 1}."
    for key, tensor in list(state.items()):
        if key.startswith(f"{OPEN_CLIP}transformer.resblocks.0."):
            name = key.removeprefix(f"{OPEN_CLIP}transformer.resblocks.0.")
            state[last + name] = torch.randn(tensor.shape, generator=generator)
    state[OPEN_CLIP + "text_projection"] = torch.randn(config.width, config.width, generator=generator)
    state[OPEN_CLIP + "logit_scale"] = torch.tensor(4.6052)
    return state


def transformers_config(config: OpenCLIPTextConfig) -> transformers.CLIPTextConfig:
    """The text encoder config of the SD 2.x diffusers folders (stabilityai/stable-diffusion-2-1)."""
    return transformers.CLIPTextConfig(
        vocab_size=config.vocab_size,
        max_position_embeddings=config.context_length,
        hidden_size=config.width,
        intermediate_size=config.width * config.mlp_ratio,
        num_hidden_layers=config.layers - 1,
        num_attention_heads=config.heads,
        hidden_act="gelu",
        bos_token_id=0,
        eos_token_id=2,
        pad_token_id=1,
    )


def transformers_open_clip(
    config: OpenCLIPTextConfig, checkpoint: dict[str, Tensor]
) -> transformers.CLIPTextModel:
    """transformers' CLIPTextModel holding the `cond_stage_model.model.*` weights, converted by diffusers.

    diffusers ignores the last block by the name it has in ViT-H (resblocks.23); at other depths the
    converted last layer (and the projection, which CLIPTextModel has no place for) is left out here.
    """
    model = transformers.CLIPTextModel(transformers_config(config))
    converted = sfu.convert_open_clip_checkpoint(model, checkpoint)
    expected = model.state_dict().keys()
    extra = {key for key in converted if key not in expected and not key.endswith("position_ids")}
    assert extra <= {"text_projection.weight"} | {
        key for key in extra if key.startswith(f"text_model.encoder.layers.{config.layers - 1}.")
    }, extra
    model.load_state_dict({k: v for k, v in converted.items() if k in expected}, strict=False)
    missing = [key for key in expected if key not in converted and not key.endswith("position_ids")]
    assert not missing, missing
    return model.eval()


def diffusers_sd2_unet_config(config: StableDiffusionConfig, checkpoint: dict[str, Tensor]) -> dict:
    unet_config = sfu.create_unet_diffusers_config_from_ldm(sd2_original_config(config), checkpoint)
    unet_config["norm_num_groups"] = config.unet.norm_groups
    return unet_config


def diffusers_sd2_unet(
    config: StableDiffusionConfig, checkpoint: dict[str, Tensor]
) -> diffusers.UNet2DConditionModel:
    """diffusers' UNet holding the `model.diffusion_model.*` weights of an original SD 2.x checkpoint."""
    unet_config = diffusers_sd2_unet_config(config, checkpoint)
    converted = sfu.convert_ldm_unet_checkpoint(checkpoint, unet_config)
    unet = diffusers.UNet2DConditionModel(**unet_config)
    unet.load_state_dict(converted, strict=True)
    return unet.eval()


def sd2_token_ids(lengths: list[int], max_length: int, generator: torch.Generator) -> Tensor:
    """Rows shaped like the SD 2.x tokenizer's output: start, `n` word ids, end, padded with id 0."""
    start, end = 49406, 49407
    rows = []
    for n in lengths:
        words = torch.randint(1, start, (n,), generator=generator).tolist()
        rows.append([start, *words, end] + [0] * (max_length - n - 2))
    return torch.tensor(rows)
