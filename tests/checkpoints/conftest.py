import pytest
from checkpoint_helpers import random_model

from sdexport.models import StableDiffusion, StableDiffusionConfig


@pytest.fixture(scope="module")
def tiny_model() -> StableDiffusion:
    return random_model(StableDiffusionConfig.tiny())
