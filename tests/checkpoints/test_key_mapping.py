"""Our diffusers -> original key mapping against the inverse: diffusers' own single-file converter."""

import pytest
import torch
from checkpoint_helpers import VARIANT, random_model
from diffusers.loaders import single_file_utils as sfu

from sdexport.checkpoints.config_file import config_to_yaml_dict
from sdexport.checkpoints.diffusers_configs import (
    unet_config_from_diffusers,
    unet_config_to_diffusers,
    vae_config_from_diffusers,
    vae_config_to_diffusers,
)
from sdexport.checkpoints.diffusers_weights import diffusers_to_original
from sdexport.models import StableDiffusion, StableDiffusionConfig
from sdexport.models.stable_diffusion import COMPONENT_PREFIXES

UNSET = object()


def diffusers_converted(component: str, state: dict, config: StableDiffusionConfig) -> dict:
    if component == "unet":
        return sfu.convert_ldm_unet_checkpoint(state, unet_config_to_diffusers(config.unet))
    if component == "vae":
        return sfu.convert_ldm_vae_checkpoint(state, vae_config_to_diffusers(config.vae))
    return sfu.convert_ldm_clip_checkpoint(state)


@pytest.mark.parametrize("config", [StableDiffusionConfig.tiny(), VARIANT], ids=["tiny", "variant"])
@pytest.mark.parametrize("component", ["unet", "vae", "text_encoder"])
def test_mapping_inverts_diffusers_converter(component: str, config: StableDiffusionConfig) -> None:
    original = random_model(config).state_dict()
    theirs = diffusers_converted(component, dict(original), config)
    back, unmapped = diffusers_to_original(component, theirs, config)

    assert unmapped == []
    expected = {key: t for key, t in original.items() if key.startswith(COMPONENT_PREFIXES[component])}
    assert len(theirs) == len(expected)
    assert sorted(back) == sorted(expected)
    for key, tensor in expected.items():
        assert back[key].shape == tensor.shape, key
        assert torch.equal(back[key], tensor), key


def test_legacy_vae_attention_names_map_to_the_same_tensors() -> None:
    """Folders saved by diffusers < 0.14 name the VAE attention query/key/value/proj_attn."""
    config = StableDiffusionConfig.tiny()
    original = random_model(config).state_dict()
    current = diffusers_converted("vae", dict(original), config)
    renames = {"to_q": "query", "to_k": "key", "to_v": "value", "to_out.0": "proj_attn"}
    legacy = {}
    for key, tensor in current.items():
        for new, old in renames.items():
            key = key.replace(f"attentions.0.{new}.", f"attentions.0.{old}.")
        legacy[key] = tensor
    assert any(".query." in key for key in legacy)
    back, unmapped = diffusers_to_original("vae", legacy, config)
    assert unmapped == []
    for key, tensor in back.items():
        assert torch.equal(tensor, original[key]), key


def test_keys_outside_sd1_are_reported() -> None:
    config = StableDiffusionConfig.tiny()
    _, unmapped = diffusers_to_original("unet", {"add_embedding.linear_1.weight": torch.zeros(1)}, config)
    assert unmapped == ["add_embedding.linear_1.weight"]


def test_mapping_at_sd15_size() -> None:
    """SD 1.5's layout (four levels, no attention at the last), on the meta device: names and shapes."""
    config = StableDiffusionConfig()
    with torch.device("meta"):
        original = StableDiffusion(config).state_dict()
    for component in ("unet", "vae", "text_encoder"):
        theirs = diffusers_converted(component, original, config)
        back, unmapped = diffusers_to_original(component, theirs, config)
        expected = {key: t for key, t in original.items() if key.startswith(COMPONENT_PREFIXES[component])}
        assert unmapped == []
        assert sorted(back) == sorted(expected)
        for key, tensor in expected.items():
            # Tensors pass through both conversions as the same objects, but for the VAE attention reshape.
            assert back[key] is tensor or (".mid.attn_1." in key and back[key].shape == tensor.shape), key


@pytest.mark.parametrize("config", [StableDiffusionConfig(), StableDiffusionConfig.tiny(), VARIANT])
def test_configs_agree_with_diffusers_derivation(config: StableDiffusionConfig) -> None:
    """Our diffusers configs against those diffusers derives from the original YAML layout of the config."""
    original_yaml = config_to_yaml_dict(config)
    theirs_unet = sfu.create_unet_diffusers_config_from_ldm(original_yaml, {}, image_size=512)
    theirs_vae = sfu.create_vae_diffusers_config_from_ldm(original_yaml, {}, image_size=512)
    latent_size = 512 // 2 ** (len(config.vae.ch_mult) - 1)
    ours_unet = unet_config_to_diffusers(config.unet, sample_size=latent_size)
    ours_vae = vae_config_to_diffusers(config.vae, sample_size=512)
    for theirs, ours in ((theirs_unet, ours_unet), (theirs_vae, ours_vae)):
        for key, value in theirs.items():
            value = list(value) if isinstance(value, tuple) else value
            assert ours.get(key, UNSET) == value, key


def test_sd15_configs_have_the_published_values() -> None:
    unet = unet_config_to_diffusers(StableDiffusionConfig().unet)
    assert unet["block_out_channels"] == [320, 640, 1280, 1280]
    assert unet["down_block_types"] == ["CrossAttnDownBlock2D"] * 3 + ["DownBlock2D"]
    assert unet["up_block_types"] == ["UpBlock2D"] + ["CrossAttnUpBlock2D"] * 3
    assert (unet["attention_head_dim"], unet["cross_attention_dim"], unet["sample_size"]) == (8, 768, 64)
    vae = vae_config_to_diffusers(StableDiffusionConfig().vae)
    assert vae["block_out_channels"] == [128, 256, 512, 512]
    assert (vae["latent_channels"], vae["layers_per_block"], vae["scaling_factor"]) == (4, 2, 0.18215)
    assert unet_config_from_diffusers(unet) == StableDiffusionConfig().unet
    assert vae_config_from_diffusers(vae) == StableDiffusionConfig().vae
