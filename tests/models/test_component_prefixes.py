"""The original layout's prefixes, which every loader reads, are the model's own attribute paths."""

import pytest
import torch

from sdexport.models import StableDiffusion, StableDiffusionConfig
from sdexport.models.stable_diffusion import COMPONENT_PREFIXES, OPEN_CLIP_PREFIX


@pytest.mark.parametrize(
    ("config", "text_prefix"),
    [
        (StableDiffusionConfig.tiny(), COMPONENT_PREFIXES["text_encoder"]),
        (StableDiffusionConfig.tiny_sd2(), OPEN_CLIP_PREFIX),
    ],
)
def test_each_prefix_names_its_network(config: StableDiffusionConfig, text_prefix: str) -> None:
    with torch.device("meta"):
        model = StableDiffusion(config)
    prefixes = {**COMPONENT_PREFIXES, "text_encoder": text_prefix}
    for component, prefix in prefixes.items():
        assert model.get_submodule(prefix.removesuffix(".")) is getattr(model, component)
    assert all(key.startswith(tuple(prefixes.values())) for key in model.state_dict())
