"""The full SD 1.5 architecture (random weights) built and validated: the UNet's weights (3.4 GB, past
protobuf's 2 GB limit) go to one external data file; the other graphs stay single files."""

import json
from pathlib import Path

import pytest
import torch

from sdexport.checkpoints import load_model, save_original
from sdexport.export.folder import BuildOptions, build_folder
from sdexport.models import StableDiffusion, StableDiffusionConfig
from sdrun.folder import open_model_folder


@pytest.mark.slow
def test_sd15_builds_and_validates(tmp_path: Path) -> None:
    torch.manual_seed(0)
    source = tmp_path / "sd15-random.safetensors"
    save_original(StableDiffusion(StableDiffusionConfig()), source, torch.float16)
    folder = tmp_path / "sd15"
    build_folder(load_model(source), folder, BuildOptions(), log=print)

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
    open_model_folder(folder, verify_checksums=True)
