"""Which UNet weights a full checkpoint (trained weights and LitEma's copy) is exported with, against
diffusers' single-file conversion: by default what the config's `use_ema` says, else the non-EMA set, as
diffusers (extract_ema=False), AUTOMATIC1111 and the CompVis scripts sample; --ema/--no-ema choose."""

from pathlib import Path

import pytest
import torch
import yaml
from checkpoint_helpers import random_model
from diffusers import UNet2DConditionModel
from diffusers.loaders.single_file_utils import convert_ldm_unet_checkpoint
from test_config_file import V1_INFERENCE_YAML

from sdexport.checkpoints import CheckpointError, load_model, write_config_yaml
from sdexport.checkpoints.config_file import read_use_ema
from sdexport.checkpoints.diffusers_configs import unet_config_to_diffusers
from sdexport.models import StableDiffusionConfig

CONFIG = StableDiffusionConfig.tiny()
UNET = "model.diffusion_model."


def full_state() -> dict[str, torch.Tensor]:
    """A full training checkpoint's state: the trained weights, LitEma's flattened UNet copy, its counters."""
    state = dict(random_model(CONFIG, seed=1).state_dict())
    for key, tensor in random_model(CONFIG, seed=2).state_dict().items():
        if key.startswith(UNET):
            state["model_ema." + key.removeprefix("model.").replace(".", "")] = tensor
    state["model_ema.decay"] = torch.tensor(0.9999)
    state["model_ema.num_updates"] = torch.tensor(1000, dtype=torch.int32)
    return state


def config_file(folder: Path, use_ema: object) -> Path:
    """The tiny model's config file, with `model.params.use_ema` set unless `use_ema` is None."""
    path = folder / "model.yaml"
    write_config_yaml(CONFIG, path)
    if use_ema is not None:
        document = yaml.safe_load(path.read_text())
        document["model"]["params"]["use_ema"] = use_ema
        path.write_text(yaml.safe_dump(document))
    return path


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> tuple[Path, dict[str, torch.Tensor]]:
    state = full_state()
    path = tmp_path_factory.mktemp("full") / "full.ckpt"
    torch.save({"state_dict": state, "global_step": 10}, path)
    return path, state


@pytest.fixture(scope="module")
def diffusers_unets(checkpoint) -> dict[bool, UNet2DConditionModel]:
    """The UNet as diffusers' single-file conversion builds it, for extract_ema False and True."""
    _, state = checkpoint
    config = unet_config_to_diffusers(CONFIG.unet)
    unets = {}
    for extract_ema in (False, True):
        unet = UNet2DConditionModel.from_config(config).eval()
        unet.load_state_dict(convert_ldm_unet_checkpoint(state, config, extract_ema=extract_ema), strict=True)
        unets[extract_ema] = unet
    return unets


def rel_err(ours: torch.Tensor, ref: torch.Tensor) -> float:
    return ((ours - ref).norm() / ref.norm()).item()


@torch.no_grad()
def unet_errors(loaded, references: dict[bool, UNet2DConditionModel]) -> dict[bool, float]:
    """Our UNet's output against diffusers' for each extract_ema."""
    generator = torch.Generator().manual_seed(5)
    sample = torch.randn(2, 4, 8, 8, generator=generator)
    context = torch.randn(2, 7, CONFIG.unet.context_dim, generator=generator)
    timestep = torch.tensor([10.0, 700.0])
    ours = loaded.model.unet(sample, timestep, context)
    return {
        extract: rel_err(ours, unet(sample, timestep, encoder_hidden_states=context).sample)
        for extract, unet in references.items()
    }


@pytest.mark.parametrize(
    ("use_ema", "ema", "extract_ema"),
    [
        (None, None, False),  # no use_ema in the config: diffusers' default
        (False, None, False),  # v1-inference.yaml
        (True, None, True),
        (False, True, True),  # --ema
        (True, False, False),  # --no-ema
    ],
)
def test_unet_set_matches_diffusers(
    tmp_path: Path, checkpoint, diffusers_unets, use_ema: bool | None, ema: bool | None, extract_ema: bool
) -> None:
    path, _ = checkpoint
    loaded = load_model(path, config=config_file(tmp_path, use_ema), ema=ema)

    errors = unet_errors(loaded, diffusers_unets)
    assert errors[extract_ema] < 1e-4
    assert errors[not extract_ema] > 0.1  # the two sets differ, so the test tells them apart
    chosen = "ema" if extract_ema else "non-ema"
    assert loaded.weights == chosen
    said = [note for note in loaded.notes if "UNet weights used" in note]
    assert len(said) == 1 and said[0].startswith("EMA" if extract_ema else "non-EMA")


def test_the_other_networks_are_the_trained_ones(tmp_path: Path, checkpoint) -> None:
    path, state = checkpoint
    loaded = load_model(path, config=config_file(tmp_path, True))
    for key, tensor in loaded.model.state_dict().items():
        if not key.startswith(UNET):
            assert torch.equal(tensor, state[key]), key


def test_v1_inference_yaml_says_non_ema(tmp_path: Path) -> None:
    path = tmp_path / "v1-inference.yaml"
    path.write_text(V1_INFERENCE_YAML)
    assert read_use_ema(path) is False


def test_config_asks_for_ema_but_the_set_is_incomplete(tmp_path: Path) -> None:
    state = full_state()
    del state["model_ema.diffusion_modelout2weight"]
    path = tmp_path / "partial.ckpt"
    torch.save({"state_dict": state}, path)
    loaded = load_model(path, config=config_file(tmp_path, True))
    assert loaded.weights == "non-ema"
    assert any("incomplete" in note for note in loaded.notes)
    assert torch.equal(loaded.model.unet.out[2].weight, state[UNET + "out.2.weight"])


def test_use_ema_that_is_not_a_boolean(tmp_path: Path, checkpoint) -> None:
    path, _ = checkpoint
    with pytest.raises(CheckpointError, match=r"use_ema must be true or false, got 'yes please'") as caught:
        load_model(path, config=config_file(tmp_path, "yes please"))
    assert "\n" not in str(caught.value)
