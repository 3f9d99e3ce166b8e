"""LCM-distilled UNets (time_cond_proj_dim): our scratch UNet, loaded through the one diffusers key mapping,
against diffusers' UNet2DConditionModel with the same random weights, fed diffusers' own guidance-scale
embedding; and sdrun's numpy embedding against diffusers' get_guidance_scale_embedding."""

import numpy as np
import pytest
import torch
from diffusers import LatentConsistencyModelPipeline, UNet2DConditionModel
from sd_reference import randomize_norms, rel_err
from tiny_diffusers import TINY_UNET

from sdexport.checkpoints.diffusers_configs import unet_config_from_diffusers
from sdexport.checkpoints.diffusers_weights import diffusers_to_original
from sdexport.models import StableDiffusionConfig, UNetModel
from sdrun.guidance_embedding import guidance_scale_embedding

COND_DIM = 16
PREFIX = "model.diffusion_model."


def diffusers_embedding(guidance_scale: float, batch: int, dim: int) -> torch.Tensor:
    """diffusers' own embedding of w - 1, as LatentConsistencyModelPipeline feeds its UNet."""
    w = torch.tensor(guidance_scale - 1).repeat(batch)
    # An instance method that uses no state of the pipeline.
    return LatentConsistencyModelPipeline.get_guidance_scale_embedding(None, w, embedding_dim=dim)


@pytest.fixture(scope="module")
def reference() -> UNet2DConditionModel:
    torch.manual_seed(3)
    unet = UNet2DConditionModel(**TINY_UNET, time_cond_proj_dim=COND_DIM).eval()
    randomize_norms(unet, torch.Generator().manual_seed(4))
    return unet


@pytest.fixture(scope="module")
def ours(reference: UNet2DConditionModel) -> UNetModel:
    unet_config = unet_config_from_diffusers(dict(reference.config))
    assert unet_config.time_cond_proj_dim == COND_DIM
    converted, unmapped = diffusers_to_original(
        "unet", reference.state_dict(), StableDiffusionConfig(unet=unet_config)
    )
    assert unmapped == []
    model = UNetModel(unet_config).eval()
    model.load_state_dict({key.removeprefix(PREFIX): t for key, t in converted.items()}, strict=True)
    return model


@pytest.mark.parametrize("guidance_scale", [8.5, 1.0, 3.0])
def test_lcm_unet_matches_diffusers(reference, ours, guidance_scale: float) -> None:
    gen = torch.Generator().manual_seed(int(guidance_scale * 10))
    sample = torch.randn(2, 4, 9, 12, generator=gen)
    context = torch.randn(2, 77, 32, generator=gen)
    timestep = torch.tensor(759.0)
    cond = diffusers_embedding(guidance_scale, 2, COND_DIM)
    with torch.no_grad():
        theirs = reference(sample, timestep, context, timestep_cond=cond).sample
        mine = ours(sample, timestep, context, cond)
    assert rel_err(mine, theirs) < 1e-4


def test_guidance_embedding_changes_the_prediction(ours) -> None:
    """Guards the embedding's path against being dropped (both models would then agree on nothing fed)."""
    gen = torch.Generator().manual_seed(0)
    sample, context = torch.randn(1, 4, 8, 8, generator=gen), torch.randn(1, 77, 32, generator=gen)
    with torch.no_grad():
        a = ours(sample, 500.0, context, diffusers_embedding(8.5, 1, COND_DIM))
        b = ours(sample, 500.0, context, diffusers_embedding(9.5, 1, COND_DIM))
    assert rel_err(a, b) > 1e-3


def test_a_plain_unet_refuses_a_guidance_embedding() -> None:
    config = StableDiffusionConfig.tiny().unet
    with pytest.raises(ValueError, match="time_cond_proj_dim"):
        UNetModel(config)(torch.zeros(1, 4, 8, 8), 1.0, torch.zeros(1, 77, 32), torch.zeros(1, 4))


@pytest.mark.parametrize("dim", [256, 16, 7])
@pytest.mark.parametrize("guidance_scale", [8.5, 1.0, 2.0, 15.25, 0.0])
def test_numpy_guidance_embedding_matches_diffusers(guidance_scale: float, dim: int) -> None:
    """Within diffusers' own float32 rounding of the sines' arguments, up to 1000 |w - 1|: one float32 step
    of the largest argument (measured: at most half of it)."""
    theirs = diffusers_embedding(guidance_scale, 3, dim).numpy()
    mine = guidance_scale_embedding(guidance_scale, 3, dim)
    assert mine.dtype == np.float32 and mine.shape == theirs.shape == (3, dim)
    largest_argument = 1000 * abs(guidance_scale - 1)
    np.testing.assert_allclose(mine, theirs, rtol=0, atol=1e-6 + largest_argument * 2**-23)
