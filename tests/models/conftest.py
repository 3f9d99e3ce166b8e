import pytest
import torch
from sd_reference import randomize_norms

from sdexport.models import StableDiffusion, StableDiffusionConfig


@pytest.fixture(scope="session")
def tiny_sd() -> StableDiffusion:
    """The tiny model with random weights (norm affines included)."""
    torch.manual_seed(0)
    model = StableDiffusion(StableDiffusionConfig.tiny()).eval()
    randomize_norms(model, torch.Generator().manual_seed(1))
    return model


@pytest.fixture(scope="session")
def tiny_checkpoint(tiny_sd: StableDiffusion) -> dict[str, torch.Tensor]:
    """The tiny model's weights under the original checkpoint's keys."""
    return tiny_sd.state_dict()
