"""Builds shared by the export tests: the tiny random-weight diffusers pipeline of tests/conftest.py, built
once into a model folder (over an older folder, with force), and a tiny original single-file checkpoint."""

from pathlib import Path

import pytest
import torch
from export_helpers import STALE_FILE, Built

from sdexport.checkpoints import LoadedModel, load_model, save_original, write_config_yaml
from sdexport.export.folder import BuildOptions, build_folder
from sdexport.models import StableDiffusion, StableDiffusionConfig


@pytest.fixture(scope="session")
def tiny_loaded(tiny_diffusers_dir: Path) -> LoadedModel:
    return load_model(tiny_diffusers_dir)


@pytest.fixture(scope="session")
def built(tmp_path_factory: pytest.TempPathFactory, tiny_loaded: LoadedModel) -> Built:
    folder = tmp_path_factory.mktemp("built") / "tiny"
    folder.mkdir()
    (folder / STALE_FILE).write_text("an older build\n")
    log: list[str] = []
    build_folder(tiny_loaded, folder, BuildOptions(force=True), log=log.append)
    return Built(folder, log, tiny_loaded)


@pytest.fixture(scope="session")
def tiny_checkpoint_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An original-layout .safetensors of the tiny config with random weights, its .yaml config beside it."""
    torch.manual_seed(0)
    model = StableDiffusion(StableDiffusionConfig.tiny())
    path = tmp_path_factory.mktemp("checkpoint") / "tiny-random.safetensors"
    save_original(model, path, torch.float32)
    write_config_yaml(model.config, path.with_suffix(".yaml"))
    return path
