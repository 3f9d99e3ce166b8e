"""The full SD 1.5 and SD 2.1 configurations: sizes against the published models and diffusers/transformers,
and (slow) output parity at a small spatial size."""

import gc
from collections.abc import Callable
from dataclasses import dataclass

import diffusers
import pytest
import torch
import transformers
from sd2_reference import (
    diffusers_sd2_unet,
    diffusers_sd2_unet_config,
    full_checkpoint,
    sd2_token_ids,
    transformers_config,
    transformers_open_clip,
)
from sd_reference import (
    diffusers_unet,
    diffusers_unet_config,
    diffusers_vae,
    diffusers_vae_config,
    randomize_norms,
    rel_err,
    sd_token_ids,
    transformers_clip,
    transformers_clip_config,
)
from torch import Tensor

from sdexport.models import StableDiffusion, StableDiffusionConfig

# stabilityai/stable-diffusion-2-1's unet/config.json and text_encoder/config.json: the entries that shape
# the networks (left out: upcast_attention, which only sets fp16 precision, and the pipeline's sizes).
SD21_UNET = {
    "in_channels": 4,
    "out_channels": 4,
    "block_out_channels": [320, 640, 1280, 1280],
    "layers_per_block": 2,
    "down_block_types": ["CrossAttnDownBlock2D"] * 3 + ["DownBlock2D"],
    "up_block_types": ["UpBlock2D"] + ["CrossAttnUpBlock2D"] * 3,
    "cross_attention_dim": 1024,
    "attention_head_dim": [5, 10, 20, 20],  # diffusers' name for the number of heads (64 channels each)
    "use_linear_projection": True,
    "norm_num_groups": 32,
}
SD21_TEXT_ENCODER = {
    "vocab_size": 49408,
    "max_position_embeddings": 77,
    "hidden_size": 1024,
    "intermediate_size": 4096,
    "num_hidden_layers": 23,  # OpenCLIP ViT-H's 24 blocks but the last, which SD 2.x does not run
    "num_attention_heads": 16,
    "hidden_act": "gelu",
    "layer_norm_eps": 1e-5,
}


def _count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def test_parameter_counts_match_sd15_and_references() -> None:
    config = StableDiffusionConfig()
    with torch.device("meta"):
        ours = StableDiffusion(config)
        unet = diffusers.UNet2DConditionModel(**diffusers_unet_config(config, {}))
        vae = diffusers.AutoencoderKL(**diffusers_vae_config(config, {}))
        clip = transformers.CLIPTextModel(transformers_clip_config(config.text_encoder))
    assert _count(ours.unet) == _count(unet) == 859_520_964
    assert _count(ours.text_encoder) == _count(clip) == 123_060_480
    assert _count(ours.vae) == _count(vae) == 83_653_863


def test_sd21_is_the_published_model() -> None:
    """Our SD 2.x config, as diffusers and transformers read it (the slow tests' references), is stabilityai's
    SD 2.1 (head counts too, which no parameter count shows), and the networks have its parameter counts."""
    config = StableDiffusionConfig.sd2()
    with torch.device("meta"):
        ours = StableDiffusion(config)
        unet = diffusers.UNet2DConditionModel(**SD21_UNET)
        clip = transformers.CLIPTextModel(transformers.CLIPTextConfig(**SD21_TEXT_ENCODER))
        read_unet = diffusers_sd2_unet_config(config, ours.state_dict())
    read_text = transformers_config(config.text_encoder).to_dict()
    assert {key: read_unet[key] for key in SD21_UNET} == SD21_UNET
    assert {key: read_text[key] for key in SD21_TEXT_ENCODER} == SD21_TEXT_ENCODER
    assert _count(ours.unet) == _count(unet) == 865_910_724
    assert _count(ours.text_encoder) == _count(clip) == 340_387_840
    assert _count(ours.vae) == 83_653_863


@dataclass(frozen=True)
class Family:
    """A full-size config and its independent references, built from the weights as its files hold them."""

    config: StableDiffusionConfig
    checkpoint: Callable[[StableDiffusion], dict[str, Tensor]]
    unet: Callable[[StableDiffusionConfig, dict[str, Tensor]], diffusers.UNet2DConditionModel]
    text_encoder: Callable[..., transformers.CLIPTextModel]
    token_ids: Callable[[list[int], int, torch.Generator], Tensor]


FAMILIES = {
    "sd15": Family(
        config=StableDiffusionConfig(),
        checkpoint=StableDiffusion.state_dict,
        unet=diffusers_unet,
        text_encoder=transformers_clip,
        token_ids=sd_token_ids,
    ),
    "sd2": Family(
        config=StableDiffusionConfig.sd2(),
        # SD 2.x files hold the whole OpenCLIP text model: its last block and projection too.
        checkpoint=full_checkpoint,
        unet=diffusers_sd2_unet,
        text_encoder=transformers_open_clip,
        token_ids=sd2_token_ids,
    ),
}


@pytest.fixture(scope="module", params=list(FAMILIES))
def family(request: pytest.FixtureRequest) -> Family:
    return FAMILIES[request.param]


@pytest.fixture(scope="module")
def full_sd(family: Family) -> StableDiffusion:
    """One family's full-size model at a time (5 GB for SD 2.x): pytest drops it when the family changes."""
    torch.manual_seed(0)
    model = StableDiffusion(family.config).eval()
    randomize_norms(model, torch.Generator().manual_seed(1))
    return model


@pytest.mark.slow
def test_full_unet_matches_diffusers(family: Family, full_sd: StableDiffusion) -> None:
    reference = family.unet(full_sd.config, family.checkpoint(full_sd))
    gen = torch.Generator().manual_seed(0)
    sample = torch.randn(2, 4, 9, 13, generator=gen)
    context = torch.randn(2, 77, full_sd.config.unet.context_dim, generator=gen)
    timestep = torch.tensor([981.0, 1.5])
    with torch.no_grad():
        err = rel_err(full_sd.unet(sample, timestep, context), reference(sample, timestep, context).sample)
    del reference
    gc.collect()
    assert err < 1e-4


@pytest.mark.slow
@pytest.mark.parametrize("family", ["sd15"], indirect=True)  # SD 2.x has the same VAE
def test_full_vae_matches_diffusers(full_sd: StableDiffusion) -> None:
    reference = diffusers_vae(full_sd.config, full_sd.state_dict())
    gen = torch.Generator().manual_seed(0)
    image = torch.rand(1, 3, 64, 48, generator=gen) * 2 - 1
    latent = torch.randn(1, 4, 8, 6, generator=gen)
    with torch.no_grad():
        encode_err = rel_err(full_sd.vae.encode(image), reference.encode(image).latent_dist.parameters)
        decode_err = rel_err(full_sd.vae.decode(latent), reference.decode(latent).sample)
    assert encode_err < 1e-4
    assert decode_err < 1e-4


@pytest.mark.slow
def test_full_text_encoder_matches_transformers(family: Family, full_sd: StableDiffusion) -> None:
    reference = family.text_encoder(full_sd.config.text_encoder, family.checkpoint(full_sd))
    ids = family.token_ids([3, 40], 77, torch.Generator().manual_seed(0))
    with torch.no_grad():
        last, pooled = full_sd.text_encoder(ids)
        ref = reference(input_ids=ids)
    assert rel_err(last, ref.last_hidden_state) < 1e-4
    assert rel_err(pooled, ref.pooler_output) < 1e-4
