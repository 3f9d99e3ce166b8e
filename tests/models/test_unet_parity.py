"""Our UNet against diffusers' UNet2DConditionModel holding the same (original-layout) weights."""

import pytest
import torch
from sd_reference import diffusers_unet, rel_err

from sdexport.models import StableDiffusion

CASES = {
    # batch, latent height, width, timestep: each as the sampler may pass it
    "square, int step per sample": (2, 16, 16, torch.tensor([999, 1])),
    "non-square, float step per sample": (2, 16, 24, torch.tensor([500.5, 17.25])),
    "uneven 9x13, python float step": (2, 9, 13, 333.3),
    "uneven 11x7, 0-dim step": (1, 11, 7, torch.tensor(42.0)),
    "1x1 latent, one step for the batch": (2, 1, 1, torch.tensor([7.0])),
}


@pytest.fixture(scope="module")
def reference(tiny_sd: StableDiffusion, tiny_checkpoint: dict[str, torch.Tensor]):
    return diffusers_unet(tiny_sd.config, tiny_checkpoint)


@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_noise_prediction_matches_diffusers(tiny_sd: StableDiffusion, reference, case) -> None:
    batch, height, width, timestep = case
    gen = torch.Generator().manual_seed(height * 100 + width)
    config = tiny_sd.config.unet
    sample = torch.randn(batch, config.in_channels, height, width, generator=gen)
    context = torch.randn(batch, 77, config.context_dim, generator=gen)
    with torch.no_grad():
        ours = tiny_sd.unet(sample, timestep, context)
        ref = reference(sample, timestep, context).sample
    assert ours.shape == ref.shape == (batch, config.out_channels, height, width)
    assert rel_err(ours, ref) < 1e-4


def test_timestep_changes_prediction(tiny_sd: StableDiffusion) -> None:
    """Guards the timestep path against being silently ignored (both models would agree on that)."""
    gen = torch.Generator().manual_seed(0)
    sample = torch.randn(1, 4, 8, 8, generator=gen)
    context = torch.randn(1, 77, tiny_sd.config.unet.context_dim, generator=gen)
    with torch.no_grad():
        a = tiny_sd.unet(sample, 10.0, context)
        b = tiny_sd.unet(sample, 900.0, context)
    assert rel_err(a, b) > 1e-3
