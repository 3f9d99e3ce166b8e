"""An SD 1.5-size file (random weights) read with the default config, no config file beside it."""

import gc
from pathlib import Path

import pytest
import torch
from checkpoint_helpers import random_model

from sdexport.checkpoints import load_model, save_original
from sdexport.models import StableDiffusionConfig

pytestmark = pytest.mark.slow
PROBES = (
    "model.diffusion_model.output_blocks.11.1.transformer_blocks.0.attn2.to_k.weight",
    "first_stage_model.decoder.up.0.block.2.conv2.weight",
    "cond_stage_model.transformer.text_model.encoder.layers.11.mlp.fc2.weight",
)


def test_sd15_fp16_safetensors_without_config(tmp_path: Path) -> None:
    model = random_model(StableDiffusionConfig())
    probes = {key: model.state_dict()[key].half().float() for key in PROBES}
    path = tmp_path / "sd15.safetensors"
    save_original(model, path, torch.float16)
    del model
    gc.collect()

    loaded = load_model(path)

    assert (loaded.weights, loaded.source_dtype, loaded.notes) == ("only set", "float16", [])
    assert loaded.model.config == StableDiffusionConfig()
    state = loaded.model.state_dict()
    for key, tensor in probes.items():
        assert torch.equal(state[key], tensor), key
