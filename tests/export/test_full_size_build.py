"""The full SD 1.5 and SD 2.x (768x768 v-prediction) architectures (random weights) built and validated: the
UNet's weights (3.4 GB, past protobuf's 2 GB limit) go to one external data file; the other graphs stay
single files (SD 2.x's text encoder too, at 1.4 GB)."""

import json
from pathlib import Path

import pytest
import torch

from sdexport.checkpoints import load_model, save_original
from sdexport.export.folder import BuildOptions, build_folder
from sdexport.models import StableDiffusion, StableDiffusionConfig
from sdrun.folder import open_model_folder


@pytest.mark.slow
@pytest.mark.parametrize(
    ("config", "prediction"),
    [
        pytest.param(StableDiffusionConfig(), None, id="sd15"),
        # `sdexport build --prediction v_prediction`: a bare SD 2.x file cannot tell it.
        pytest.param(StableDiffusionConfig.sd2(), "v_prediction", id="sd2"),
    ],
)
def test_full_size_builds_and_validates(
    tmp_path: Path, config: StableDiffusionConfig, prediction: str | None
) -> None:
    torch.manual_seed(0)
    source = tmp_path / "random.safetensors"
    save_original(StableDiffusion(config), source, torch.float16)
    loaded = load_model(source, prediction=prediction)
    assert loaded.model.config == config
    folder = tmp_path / "built"
    build_folder(loaded, folder, BuildOptions(), log=print)

    unet_files = sorted(p.name for p in (folder / "unet").iterdir())
    assert unet_files == ["config.json", "model.onnx", "model.onnx.data"]
    assert (folder / "unet" / "model.onnx.data").stat().st_size > 3 * 10**9
    for component in ("text_encoder", "vae_encoder", "vae_decoder"):
        assert sorted(p.name for p in (folder / component).iterdir()) == ["config.json", "model.onnx"]

    manifest = json.loads((folder / "sdexport_manifest.json").read_text())
    assert "unet/model.onnx.data" in manifest["files"]
    for recorded in manifest["components"].values():
        checks = recorded["validation"]["checks"]
        assert len(checks) >= 3 and all(check["max_abs_error"] <= check["limit"] for check in checks)
    opened = open_model_folder(folder, verify_checksums=True)
    # What sdrun reads: its default size (x8 pixels) and the sampler's prediction type.
    assert opened.config("unet")["sample_size"] == config.sample_size
    scheduler = json.loads((folder / "scheduler" / "scheduler_config.json").read_text())
    assert scheduler["prediction_type"] == config.prediction_type
