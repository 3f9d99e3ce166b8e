"""The full SD 1.5 configuration: sizes against the published counts and diffusers/transformers,
and (slow) output parity at a small spatial size."""

import gc

import diffusers
import pytest
import torch
import transformers
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

from sdexport.models import StableDiffusion, StableDiffusionConfig


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


@pytest.fixture(scope="module")
def full_sd() -> StableDiffusion:
    torch.manual_seed(0)
    model = StableDiffusion(StableDiffusionConfig()).eval()
    randomize_norms(model, torch.Generator().manual_seed(1))
    return model


@pytest.mark.slow
def test_full_unet_matches_diffusers(full_sd: StableDiffusion) -> None:
    reference = diffusers_unet(full_sd.config, full_sd.state_dict())
    gen = torch.Generator().manual_seed(0)
    sample = torch.randn(2, 4, 9, 13, generator=gen)
    context = torch.randn(2, 77, 768, generator=gen)
    timestep = torch.tensor([981.0, 1.5])
    with torch.no_grad():
        err = rel_err(full_sd.unet(sample, timestep, context), reference(sample, timestep, context).sample)
    del reference
    gc.collect()
    assert err < 1e-4


@pytest.mark.slow
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
def test_full_clip_matches_transformers(full_sd: StableDiffusion) -> None:
    reference = transformers_clip(full_sd.config.text_encoder, full_sd.state_dict())
    ids = sd_token_ids([3, 40], 77, torch.Generator().manual_seed(0))
    with torch.no_grad():
        last, pooled = full_sd.text_encoder(ids)
        ref = reference(input_ids=ids)
    assert rel_err(last, ref.last_hidden_state) < 1e-4
    assert rel_err(pooled, ref.pooler_output) < 1e-4
