"""A diffusers folder written by diffusers/transformers themselves (random weights), loaded by our reader:
the outputs of our modules against those of the modules that wrote it."""

import json
from pathlib import Path

import pytest
import torch
import transformers
from checkpoint_helpers import VARIANT
from diffusers import AutoencoderKL, PNDMScheduler, UNet2DConditionModel
from tiny_diffusers import randomize
from torch import Tensor

from sdexport.checkpoints import LoadedModel, load_model
from sdexport.checkpoints.diffusers_configs import (
    scheduler_config_to_diffusers,
    text_encoder_config_to_diffusers,
    unet_config_to_diffusers,
    vae_config_to_diffusers,
)
from sdexport.models import StableDiffusionConfig

TOLERANCE = 1e-4


def rel_err(ours: Tensor, ref: Tensor) -> float:
    return ((ours - ref).norm() / ref.norm()).item()


class Reference:
    """The three networks as diffusers and transformers build them, saved as a diffusers folder."""

    def __init__(self, config: StableDiffusionConfig, folder: Path, vae_as_bin: bool = False):
        self.unet = randomize(UNet2DConditionModel.from_config(unet_config_to_diffusers(config.unet)), 1)
        self.vae = randomize(AutoencoderKL.from_config(vae_config_to_diffusers(config.vae)), 2)
        text_config = transformers.CLIPTextConfig(**text_encoder_config_to_diffusers(config.text_encoder))
        self.text_encoder = randomize(transformers.CLIPTextModel(text_config), 3)
        self.unet.save_pretrained(folder / "unet")
        self.vae.save_pretrained(folder / "vae", safe_serialization=not vae_as_bin)
        self.text_encoder.save_pretrained(folder / "text_encoder")
        PNDMScheduler.from_config(scheduler_config_to_diffusers(config)).save_pretrained(folder / "scheduler")
        index = {"_class_name": "StableDiffusionPipeline", "_diffusers_version": "0.36.0"}
        (folder / "model_index.json").write_text(json.dumps(index))


@pytest.fixture(scope="module", params=["tiny", "variant"])
def reference_and_loaded(request, tmp_path_factory) -> tuple[Reference, LoadedModel]:
    config = StableDiffusionConfig.tiny() if request.param == "tiny" else VARIANT
    folder = tmp_path_factory.mktemp(request.param) / "model"
    reference = Reference(config, folder, vae_as_bin=request.param == "variant")
    return reference, load_model(folder)


@torch.no_grad()
def test_unet_matches_diffusers(reference_and_loaded) -> None:
    reference, loaded = reference_and_loaded
    unet = loaded.model.unet
    generator = torch.Generator().manual_seed(10)
    sample = torch.randn(2, 4, 16, 16, generator=generator)
    context = torch.randn(2, 7, unet.config.context_dim, generator=generator)
    timestep = torch.tensor([3.0, 801.0])
    expected = reference.unet(sample, timestep, encoder_hidden_states=context).sample
    assert rel_err(unet(sample, timestep, context), expected) < TOLERANCE


@torch.no_grad()
def test_vae_matches_diffusers(reference_and_loaded) -> None:
    reference, loaded = reference_and_loaded
    vae = loaded.model.vae
    generator = torch.Generator().manual_seed(11)
    image = torch.rand(1, 3, 32, 32, generator=generator) * 2 - 1
    latent = torch.randn(1, 4, 8, 8, generator=generator)
    assert rel_err(vae.encode(image), reference.vae.encode(image).latent_dist.parameters) < TOLERANCE
    assert rel_err(vae.decode(latent), reference.vae.decode(latent).sample) < TOLERANCE


@torch.no_grad()
def test_text_encoder_matches_transformers(reference_and_loaded) -> None:
    reference, loaded = reference_and_loaded
    ids = torch.tensor([[49406, 320, 1929, 539, 3309, 49407] + [49407] * 71, [49406, 7, 49407] + [0] * 74])
    hidden, pooled = loaded.model.text_encoder(ids)
    expected = reference.text_encoder(ids)
    assert rel_err(hidden, expected.last_hidden_state) < TOLERANCE
    assert rel_err(pooled, expected.pooler_output) < TOLERANCE


def test_what_was_read(reference_and_loaded) -> None:
    reference, loaded = reference_and_loaded
    assert (loaded.kind, loaded.weights, loaded.source_dtype) == ("diffusers", "only set", "float32")
    config = loaded.model.config
    assert config.vae.scaling_factor == reference.vae.config.scaling_factor
    scheduler = PNDMScheduler.from_pretrained(loaded.source / "scheduler")
    assert (config.beta_start, config.beta_end, config.beta_schedule) == (
        scheduler.config.beta_start,
        scheduler.config.beta_end,
        scheduler.config.beta_schedule,
    )


def test_fp16_variant_is_read_into_float32(tmp_path: Path) -> None:
    config = StableDiffusionConfig.tiny()
    reference = Reference(config, tmp_path / "model")
    for component in ("unet", "vae", "text_encoder"):
        module = getattr(reference, component)
        for path in (tmp_path / "model" / component).glob("*.safetensors"):
            path.unlink()
        module.half().save_pretrained(tmp_path / "model" / component, variant="fp16")
    loaded = load_model(tmp_path / "model")
    assert loaded.source_dtype == "float16"
    assert all(p.dtype == torch.float32 for p in loaded.model.parameters())
    assert any("fp16 variant" in note for note in loaded.notes)
    expected = reference.vae.decoder.conv_out.weight.float()
    assert torch.equal(loaded.model.vae.decoder.conv_out.weight, expected)
