"""Original single files written several ways (as the training code and converters write them) and read
back: the loaded weights must be the written ones, in float32."""

import sys
import types
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from checkpoint_helpers import random_model

from sdexport.checkpoints import CheckpointError, load_model, original, save_original, write_config_yaml
from sdexport.models import StableDiffusion, StableDiffusionConfig

SCHEDULE_BUFFERS = ("betas", "alphas_cumprod", "alphas_cumprod_prev", "posterior_mean_coef1")


def assert_holds(model: StableDiffusion, state: dict[str, torch.Tensor]) -> None:
    loaded = model.state_dict()
    assert sorted(loaded) == sorted(state)
    for key, tensor in state.items():
        assert loaded[key].dtype == torch.float32, key
        assert torch.equal(loaded[key], tensor.float()), key


@pytest.fixture()
def tiny_yaml(tmp_path: Path) -> Path:
    path = tmp_path / "tiny-config.yaml"
    write_config_yaml(StableDiffusionConfig.tiny(), path)
    return path


def test_ckpt_with_lightning_wrapper_and_sibling_yaml(tmp_path: Path, tiny_model: StableDiffusion) -> None:
    state = tiny_model.state_dict()
    extras = {name: torch.rand(1000, dtype=torch.float64) for name in SCHEDULE_BUFFERS}
    extras["cond_stage_model.transformer.text_model.embeddings.position_ids"] = torch.arange(77)[None]
    path = tmp_path / "model.ckpt"
    torch.save({"state_dict": {**state, **extras}, "global_step": 470000, "epoch": 3}, path)
    write_config_yaml(StableDiffusionConfig.tiny(), tmp_path / "model.yaml")

    loaded = load_model(path)

    assert_holds(loaded.model, state)
    assert (loaded.name, loaded.kind, loaded.weights, loaded.source_dtype) == (
        "model",
        "original",
        "only set",
        "float32",
    )
    assert any("global_step 470000" in note for note in loaded.notes)
    assert any("ignored 5 entries" in note for note in loaded.notes)


def test_bare_state_dict_ckpt_with_explicit_config(tmp_path: Path, tiny_model, tiny_yaml) -> None:
    path = tmp_path / "bare.pt"
    torch.save(tiny_model.state_dict(), path)
    assert_holds(load_model(path, config=tiny_yaml).model, tiny_model.state_dict())


def test_legacy_pickle_format(tmp_path: Path, tiny_model, tiny_yaml) -> None:
    """torch.save's pre-1.6 format: not a zip, so read without memory-mapping."""
    path = tmp_path / "legacy.ckpt"
    torch.save({"state_dict": tiny_model.state_dict()}, path, _use_new_zipfile_serialization=False)
    assert_holds(load_model(path, config=tiny_yaml).model, tiny_model.state_dict())


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_safetensors_round_trip(tmp_path: Path, tiny_model, tiny_yaml, dtype: torch.dtype) -> None:
    path = tmp_path / "model.safetensors"
    save_original(tiny_model, path, dtype)
    loaded = load_model(path, config=tiny_yaml)
    assert loaded.source_dtype == str(dtype).removeprefix("torch.")
    assert_holds(loaded.model, {key: t.to(dtype) for key, t in tiny_model.state_dict().items()})


def test_fp16_ckpt(tmp_path: Path, tiny_model, tiny_yaml) -> None:
    half = {key: t.half() for key, t in tiny_model.state_dict().items()}
    path = tmp_path / "half.ckpt"
    torch.save({"state_dict": half}, path)
    loaded = load_model(path, config=tiny_yaml)
    assert loaded.source_dtype == "float16"
    assert_holds(loaded.model, half)


def full_ema_checkpoint(path: Path, trained: StableDiffusion, ema: StableDiffusion) -> None:
    """A full training checkpoint: trained weights, LitEma's flattened copy of the UNet, its counters."""
    state = dict(trained.state_dict())
    for key, tensor in ema.state_dict().items():
        if key.startswith("model.diffusion_model."):
            state["model_ema." + key.removeprefix("model.").replace(".", "")] = tensor
    state["model_ema.decay"] = torch.tensor(0.9999)
    state["model_ema.num_updates"] = torch.tensor(1000, dtype=torch.int32)
    torch.save({"state_dict": state}, path)


@pytest.mark.parametrize(("ema", "expected"), [(None, "non-ema"), (True, "ema"), (False, "non-ema")])
def test_ema_choice(tmp_path: Path, tiny_yaml, ema: bool | None, expected: str) -> None:
    trained = random_model(StableDiffusionConfig.tiny(), seed=1)
    averaged = random_model(StableDiffusionConfig.tiny(), seed=2)
    path = tmp_path / "full.ckpt"
    full_ema_checkpoint(path, trained, averaged)

    loaded = load_model(path, config=tiny_yaml, ema=ema)

    assert loaded.weights == expected
    chosen = averaged if expected == "ema" else trained
    unet = {k: t for k, t in chosen.state_dict().items() if k.startswith("model.diffusion_model.")}
    rest = {k: t for k, t in trained.state_dict().items() if not k.startswith("model.diffusion_model.")}
    assert_holds(loaded.model, {**unet, **rest})
    other = trained if expected == "ema" else averaged
    assert not torch.equal(loaded.model.unet.out[2].weight, other.unet.out[2].weight)
    assert any(expected.upper() in note.upper() for note in loaded.notes)


def test_ema_requested_but_absent(tmp_path: Path, tiny_model, tiny_yaml) -> None:
    path = tmp_path / "pruned.safetensors"
    save_original(tiny_model, path)
    with pytest.raises(CheckpointError, match="no EMA weights"):
        load_model(path, config=tiny_yaml, ema=True)
    assert load_model(path, config=tiny_yaml, ema=False).weights == "only set"


def test_lightning_trainer_state_is_not_fatal(tmp_path: Path, tiny_model, tiny_yaml, monkeypatch) -> None:
    """Training checkpoints pickle callback classes and numpy scalars beside the weights."""
    package = "pytorch_lightning.callbacks"
    names = ("pytorch_lightning", package, f"{package}.model_checkpoint")
    for name in names:
        monkeypatch.setitem(sys.modules, name, types.ModuleType(name))
    module = sys.modules[names[-1]]

    class ModelCheckpoint:
        def __init__(self) -> None:
            self.best_model_score = np.float64(0.25)

    ModelCheckpoint.__module__, ModelCheckpoint.__qualname__ = module.__name__, "ModelCheckpoint"
    module.ModelCheckpoint = ModelCheckpoint
    path = tmp_path / "lightning.ckpt"
    callbacks = {ModelCheckpoint: {"best_model_score": np.float64(0.25), "kept": ModelCheckpoint()}}
    torch.save({"state_dict": tiny_model.state_dict(), "callbacks": callbacks, "global_step": 5}, path)
    for name in names:
        monkeypatch.delitem(sys.modules, name)

    assert_holds(load_model(path, config=tiny_yaml).model, tiny_model.state_dict())


def test_incomplete_ema_set(tmp_path: Path, tiny_yaml) -> None:
    trained = random_model(StableDiffusionConfig.tiny(), seed=1)
    path = tmp_path / "partial.ckpt"
    full_ema_checkpoint(path, trained, random_model(StableDiffusionConfig.tiny(), seed=2))
    state = torch.load(path, weights_only=True)
    del state["state_dict"]["model_ema.diffusion_modelout2weight"]
    torch.save(state, path)

    loaded = load_model(path, config=tiny_yaml)
    assert loaded.weights == "non-ema"
    assert_holds(loaded.model, trained.state_dict())
    with pytest.raises(CheckpointError, match="EMA weights are incomplete.*--no-ema"):
        load_model(path, config=tiny_yaml, ema=True)


@pytest.mark.parametrize(
    "family_config",
    [StableDiffusionConfig(), StableDiffusionConfig.sd2("epsilon")],
    ids=["sd-v1-5-inpainting", "sd-2-inpainting"],
)
def test_inpainting_file_without_config(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, family_config: StableDiffusionConfig
) -> None:
    """The inpainting files ship without a config file: the UNet's 9 input channels come from its weights,
    and SD 2.x inpainting is epsilon at 512x512, as diffusers' single-file loader takes them. Full size, on
    the meta device: nothing is allocated."""
    config = replace(family_config, unet=replace(family_config.unet, in_channels=9))
    with torch.device("meta"):
        state = dict(StableDiffusion(config).state_dict())
    monkeypatch.setattr(original, "read_tensor_file", lambda path: state)
    path = tmp_path / "inpainting.safetensors"
    path.touch()
    assert load_model(path).model.config == config
