"""Bad input: each case must raise CheckpointError with a one-line message that names the problem."""

import json
import os
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from sdexport.checkpoints import CheckpointError, load_model, save_original, write_config_yaml
from sdexport.checkpoints.diffusers_configs import unet_config_to_diffusers
from sdexport.models import StableDiffusion, StableDiffusionConfig, UNetConfig

UNET = "model.diffusion_model."


def load_error(source: Path, **kwargs) -> str:
    with pytest.raises(CheckpointError) as caught:
        load_model(source, **kwargs)
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith(str(source))
    return message


@pytest.fixture()
def tiny_state(tiny_model: StableDiffusion) -> dict[str, torch.Tensor]:
    return dict(tiny_model.state_dict())


@pytest.fixture()
def tiny_yaml(tmp_path: Path) -> Path:
    path = tmp_path / "tiny.yaml"
    write_config_yaml(StableDiffusionConfig.tiny(), path)
    return path


def written(tmp_path: Path, state: dict[str, torch.Tensor], name: str = "model.safetensors") -> Path:
    path = tmp_path / name
    save_file({key: t.contiguous() for key, t in state.items()}, str(path))
    return path


@pytest.mark.parametrize("name", ["model.ckpt", "model.safetensors"])
def test_truncated_file(tmp_path: Path, tiny_model: StableDiffusion, name: str) -> None:
    path = tmp_path / name
    if name.endswith(".ckpt"):
        torch.save({"state_dict": tiny_model.state_dict()}, path)
    else:
        save_original(tiny_model, path)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    assert "truncated or corrupt" in load_error(path)


class RunsCode:
    """Unpickling this calls os.system, as a malicious checkpoint would."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("wrapped", [True, False])
def test_pickle_that_runs_code_is_refused(tmp_path: Path, tiny_state, wrapped: bool) -> None:
    marker = tmp_path / "code-ran"
    payload = {**tiny_state, "evil": RunsCode(marker)}
    path = tmp_path / "model.ckpt"
    torch.save({"state_dict": payload} if wrapped else payload, path)
    message = load_error(path)
    assert not marker.exists()
    assert "refused to unpickle" in message and "system" in message


def test_sdxl_shaped_state_dict(tmp_path: Path, tiny_state) -> None:
    state = {
        key.replace("cond_stage_model.transformer.", "conditioner.embedders.0.transformer."): t
        for key, t in tiny_state.items()
    }
    state[UNET + "label_emb.0.0.weight"] = torch.zeros(128, 2816)
    assert "unsupported model: SDXL" in load_error(written(tmp_path, state))


def test_instruct_pix2pix_shaped_state_dict(tmp_path: Path, tiny_state) -> None:
    """Inpainting UNets (9 input channels) load; other input widths are refused."""
    conv_in = UNET + "input_blocks.0.0.weight"
    tiny_state[conv_in] = torch.zeros(32, 8, 3, 3)
    assert "a UNet with 8 input channels" in load_error(written(tmp_path, tiny_state))


def test_unknown_content(tmp_path: Path, tiny_state) -> None:
    prefix = "first_stage_model."
    vae_only = {key.removeprefix(prefix): t for key, t in tiny_state.items() if key.startswith(prefix)}
    message = load_error(written(tmp_path, vae_only))
    assert "unsupported model: found entries decoder (104), encoder" in message
    assert "without model.diffusion_model.*" in message


def test_missing_unexpected_and_misshaped_tensors(tmp_path: Path, tiny_state, tiny_yaml) -> None:
    dropped = "first_stage_model.decoder.up.1.block.0.conv2.weight"
    extra = UNET + "input_blocks.1.1.transformer_blocks.0.attn3.to_q.weight"
    reshaped = UNET + "output_blocks.2.0.skip_connection.weight"
    del tiny_state[dropped]
    tiny_state[extra] = torch.zeros(64, 64)
    tiny_state[reshaped] = tiny_state[reshaped][:, :-1]
    message = load_error(written(tmp_path, tiny_state), config=tiny_yaml)
    assert f"1 missing: {dropped}" in message
    assert f"1 unexpected: {extra}" in message
    assert f"1 mis-shaped: {reshaped}" in message


def test_default_config_does_not_fit_tiny_weights(tmp_path: Path, tiny_state) -> None:
    message = load_error(written(tmp_path, tiny_state))
    assert "the config (SD 1.x defaults) does not fit the weights" in message
    assert "unet.model_channels 320 vs 32" in message and "--config" in message


def test_config_with_other_structure_does_not_fit(tmp_path: Path, tiny_state) -> None:
    """A size no single tensor shows (blocks per level) surfaces as missing/unexpected tensors."""
    config = StableDiffusionConfig.tiny()
    config.unet.num_res_blocks = 1
    path = tmp_path / "model.yaml"
    write_config_yaml(config, path)
    message = load_error(written(tmp_path, tiny_state))
    assert f"the weights do not fit the config ({path})" in message
    assert "missing" in message and "unexpected" in message


def test_paths_that_are_not_checkpoints(tmp_path: Path) -> None:
    assert "no such file or folder" in load_error(tmp_path / "absent.safetensors")
    assert "not a diffusers model" in load_error(tmp_path)
    text = tmp_path / "notes.txt"
    text.write_text("hello")
    assert "unsupported file type '.txt'" in load_error(text)


def test_missing_explicit_config(tmp_path: Path, tiny_model: StableDiffusion) -> None:
    path = tmp_path / "model.safetensors"
    save_original(tiny_model, path)
    assert "config file" in load_error(path, config=tmp_path / "absent.yaml")


def diffusers_folder(tmp_path: Path, unet: UNetConfig, extra_dirs: tuple[str, ...] = ()) -> Path:
    folder = tmp_path / "pipeline"
    (folder / "unet").mkdir(parents=True)
    (folder / "unet" / "config.json").write_text(json.dumps(unet_config_to_diffusers(unet)))
    (folder / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusionPipeline"}))
    for name in extra_dirs:
        (folder / name).mkdir()
    return folder


def test_sdxl_diffusers_folder(tmp_path: Path) -> None:
    folder = diffusers_folder(tmp_path, UNetConfig(), extra_dirs=("text_encoder_2",))
    assert "unsupported model: SDXL (a second text encoder" in load_error(folder)


def test_diffusers_folder_with_unsupported_setting(tmp_path: Path) -> None:
    folder = diffusers_folder(tmp_path, UNetConfig())
    config = json.loads((folder / "unet" / "config.json").read_text())
    config["resnet_time_scale_shift"] = "scale_shift"
    (folder / "unet" / "config.json").write_text(json.dumps(config))
    assert "resnet_time_scale_shift='scale_shift'" in load_error(folder)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('{"in_channels": 1e999}', "the number 1e999 is out of range"),
        ('{"in_channels": ' + "9" * 100 + "}", "an integer of 100 digits"),
        ('{"in_channels": NaN}', "NaN is not a number"),
        ("[" * 100_000 + "]" * 100_000, "nests too deeply"),
        (" " * 16 * 2**20 + "{}", "is over 16 MiB"),
    ],
)
def test_diffusers_folder_with_hostile_config(tmp_path: Path, text: str, expected: str) -> None:
    """A stranger's config.json is read bounded, as sdrun reads a model folder's: refused by name."""
    folder = diffusers_folder(tmp_path, UNetConfig())
    (folder / "unet" / "config.json").write_text(text)
    message = load_error(folder)
    assert "unet/config.json" in message and expected in message
    assert message.endswith("get the model again from its publisher")


def test_diffusers_folder_without_weights(tmp_path: Path) -> None:
    folder = diffusers_folder(tmp_path, UNetConfig())
    assert "vae/config.json is missing" in load_error(folder)


def test_diffusers_folder_with_another_distillation_schedule(tmp_path: Path) -> None:
    """An LCM/TCD folder distilled on other than the published 50 steps would sample on the wrong timesteps
    once exported (the folder records 50): refused by name."""
    folder = diffusers_folder(tmp_path, UNetConfig(), extra_dirs=("scheduler",))
    scheduler = {"_class_name": "LCMScheduler", "original_inference_steps": 100}
    (folder / "scheduler" / "scheduler_config.json").write_text(json.dumps(scheduler))
    assert "original_inference_steps 100 is not supported" in load_error(folder)
    scheduler["original_inference_steps"] = 50
    (folder / "scheduler" / "scheduler_config.json").write_text(json.dumps(scheduler))
    assert "vae/config.json is missing" in load_error(folder)
