"""Our OpenCLIP text encoder and SD 2.x UNet against transformers' and diffusers' networks holding the
same original-layout weights (converted by diffusers' single-file code), as SD 2.x's pipeline runs them."""

import pytest
import torch
from sd2_reference import (
    diffusers_sd2_unet,
    full_checkpoint,
    sd2_token_ids,
    tiny_sd2,
    transformers_open_clip,
)
from sd_reference import rel_err

from sdexport.checkpoints.weights import build_model, split_unused
from sdexport.models import StableDiffusion


@pytest.fixture(scope="module")
def model() -> StableDiffusion:
    return tiny_sd2()


@pytest.fixture(scope="module")
def checkpoint(model: StableDiffusion) -> dict[str, torch.Tensor]:
    return full_checkpoint(model)


def test_text_encoder_matches_transformers(model: StableDiffusion, checkpoint) -> None:
    reference = transformers_open_clip(model.config.text_encoder, checkpoint)
    ids = sd2_token_ids([0, 5, 30, 75], 77, torch.Generator().manual_seed(0))
    with torch.no_grad():
        last, pooled = model.text_encoder(ids)
        ref = reference(input_ids=ids)
    # The pipeline's prompt embeddings: diffusers' 23-of-24-layer model's last_hidden_state.
    assert last.shape == ref.last_hidden_state.shape
    assert rel_err(last, ref.last_hidden_state) < 1e-4
    assert rel_err(pooled, ref.pooler_output) < 1e-4


def test_unet_matches_diffusers(model: StableDiffusion, checkpoint) -> None:
    reference = diffusers_sd2_unet(model.config, checkpoint)
    gen = torch.Generator().manual_seed(3)
    sample = torch.randn(2, 4, 8, 12, generator=gen)
    context = torch.randn(2, 77, model.config.unet.context_dim, generator=gen)
    timestep = torch.tensor([10.0, 900.0])
    with torch.no_grad():
        ours = model.unet(sample, timestep, context)
        ref = reference(sample, timestep, encoder_hidden_states=context).sample
    assert rel_err(ours, ref) < 1e-4


def test_full_checkpoint_loads_without_the_unused_block(model: StableDiffusion, checkpoint) -> None:
    """The last text block, the projection and logit_scale of a real file are left out, nothing else."""
    tensors, _ = split_unused(checkpoint)
    built = build_model(tensors, model.config, "test")
    assert built.state_dict().keys() == model.state_dict().keys()
    for key, tensor in built.state_dict().items():
        assert torch.equal(tensor, model.state_dict()[key])
