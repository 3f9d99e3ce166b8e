"""Fixtures shared across test folders: a tiny random-weight Stable Diffusion (tests/tiny_diffusers.py), as
a diffusers folder and as the ONNX folder that optimum-cli exports from it (the interop case: sdrun runs
what optimum built), and its inpainting variant (tests/inpaint_models.py) as a diffusers folder and as our
build of it."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
from optimum_cli import optimum_export

TINY_MODEL_NAME = "tiny-random-sd"
PREBUILT_ONNX_DIR_VARIABLE = "SDRUN_TINY_ONNX_DIR"


@pytest.fixture(scope="session")
def tiny_diffusers_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tiny_diffusers import build_tiny_diffusers_pipeline

    folder = tmp_path_factory.mktemp("tiny-diffusers")
    build_tiny_diffusers_pipeline(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_onnx_dir(tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest) -> Path:
    """The optimum export of `tiny_diffusers_dir`; tests must not modify it (copy it first).

    With SDRUN_TINY_ONNX_DIR set, that folder (an earlier export) is used instead, for machines without
    diffusers and optimum, such as a GPU machine checking the CUDA provider.
    """
    prebuilt = os.environ.get(PREBUILT_ONNX_DIR_VARIABLE)
    if prebuilt:
        return Path(prebuilt)
    out = tmp_path_factory.mktemp("onnx") / TINY_MODEL_NAME
    optimum_export(request.getfixturevalue("tiny_diffusers_dir"), out)
    return out


@pytest.fixture(scope="session")
def tiny_sdexport_dir(tmp_path_factory: pytest.TempPathFactory, tiny_diffusers_dir: Path) -> Path:
    """Our exporter's folder (`sdexport build`) of the same weights as `tiny_onnx_dir`; do not modify."""
    out = tmp_path_factory.mktemp("sdexport") / TINY_MODEL_NAME
    build = "from sdexport.cli import main; main()"
    command = [sys.executable, "-c", build, "build", str(tiny_diffusers_dir), "--output", str(out)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=600)
    if done.returncode != 0:
        raise RuntimeError(f"sdexport build failed:\n{done.stderr[-4000:]}")
    return out


@pytest.fixture(scope="session")
def inpainting_diffusers_dir(tmp_path_factory: pytest.TempPathFactory, tiny_diffusers_dir: Path) -> Path:
    """`tiny_diffusers_dir` with a 9-channel UNet, saved as diffusers' StableDiffusionInpaintPipeline."""
    from inpaint_models import build_tiny_inpainting_pipeline

    folder = tmp_path_factory.mktemp("inpainting-diffusers")
    build_tiny_inpainting_pipeline(tiny_diffusers_dir, folder)
    return folder


@pytest.fixture(scope="session")
def inpainting_sdexport_dir(tmp_path_factory: pytest.TempPathFactory, inpainting_diffusers_dir: Path) -> Path:
    """Our build of `inpainting_diffusers_dir`; do not modify."""
    from sdexport.checkpoints import load_model
    from sdexport.export.folder import BuildOptions, build_folder

    folder = tmp_path_factory.mktemp("inpainting-sdexport") / "tiny-inpainting"
    build_folder(load_model(inpainting_diffusers_dir), folder, BuildOptions(), log=lambda line: None)
    return folder
