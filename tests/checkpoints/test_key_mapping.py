"""Our diffusers -> original key mapping against the inverse: diffusers' own single-file converter."""

import pytest
import torch
from checkpoint_helpers import VARIANT, random_model
from diffusers.loaders import single_file_utils as sfu

from sdexport.checkpoints.diffusers_layout import (
    COMPONENT_PREFIXES,
    diffusers_to_original,
    unet_config_to_diffusers,
    vae_config_to_diffusers,
)
from sdexport.models import StableDiffusionConfig


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
