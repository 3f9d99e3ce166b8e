"""Our AutoencoderKL against diffusers' AutoencoderKL holding the same (original-layout) weights."""

import pytest
import torch
from sd_reference import diffusers_vae, rel_err

from sdexport.models import StableDiffusion


@pytest.fixture(scope="module")
def reference(tiny_sd: StableDiffusion, tiny_checkpoint: dict[str, torch.Tensor]):
    return diffusers_vae(tiny_sd.config, tiny_checkpoint)


@pytest.mark.parametrize("size", [(64, 64), (72, 104)], ids=["square", "non-square"])
def test_encode_moments_match_diffusers(tiny_sd: StableDiffusion, reference, size: tuple[int, int]) -> None:
    image = torch.rand(2, 3, *size, generator=torch.Generator().manual_seed(0)) * 2 - 1
    with torch.no_grad():
        ours = tiny_sd.vae.encode(image)
        ref = reference.encode(image).latent_dist.parameters
    assert ours.shape == ref.shape == (2, 2 * tiny_sd.config.vae.embed_dim, size[0] // 8, size[1] // 8)
    assert rel_err(ours, ref) < 1e-4


@pytest.mark.parametrize("size", [(8, 8), (9, 13)], ids=["square", "uneven"])
def test_decode_matches_diffusers(tiny_sd: StableDiffusion, reference, size: tuple[int, int]) -> None:
    latent = torch.randn(2, tiny_sd.config.vae.embed_dim, *size, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ours = tiny_sd.vae.decode(latent)
        ref = reference.decode(latent).sample
    assert ours.shape == ref.shape == (2, 3, size[0] * 8, size[1] * 8)
    assert rel_err(ours, ref) < 1e-4
