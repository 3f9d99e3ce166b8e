"""Inpainting models (a UNet of 9 input channels) across the exporters and runtimes: `sdexport build` of an
original single file (the sd-v1-5-inpainting layout) against diffusers' own single-file loader, optimum's
inpainting pipeline on our folder against diffusers', and sdrun on optimum's export against our export.

The single file holds random weights (norm affines too, so a swapped tensor shows) in the architecture of
the tiny diffusers inpainting folder, which diffusers' `from_single_file` then takes as its config; its
.yaml lies beside it, as tiny sizes need (bare full-size files: tests/checkpoints/test_original_files.py).
"""

import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch
from click.testing import CliRunner
from diffusers import StableDiffusionInpaintPipeline
from export_helpers import ATOL, OPTIMUM_LATENT_RTOL
from inpaint_models import box_mask, init_picture
from optimum.onnxruntime import ORTStableDiffusionInpaintPipeline
from optimum_cli import optimum_export
from tiny_diffusers import randomize

from sdexport.checkpoints import load_model, save_original, write_config_yaml
from sdexport.cli import main
from sdexport.models import StableDiffusion
from sdrun.folder import UnverifiedFolderWarning
from sdrun.pipeline import Pipeline

SIZE = 64
PROMPT = "a red cube on a wooden table"
NEGATIVE = "blurry"


@pytest.fixture(scope="module")
def inpainting_file(tmp_path_factory: pytest.TempPathFactory, inpainting_diffusers_dir: Path) -> Path:
    """An original-layout .safetensors of the tiny inpainting architecture, its .yaml config beside it."""
    config = load_model(inpainting_diffusers_dir).model.config
    path = tmp_path_factory.mktemp("inpainting-file") / "tiny-inpainting.safetensors"
    save_original(randomize(StableDiffusion(config), seed=4), path, torch.float32)
    write_config_yaml(config, path.with_suffix(".yaml"))
    return path


@pytest.fixture(scope="module")
def file_folder(tmp_path_factory: pytest.TempPathFactory, inpainting_file: Path) -> Path:
    """`sdexport build FILE`, as a user runs it; without the build's own check, as the UNet is checked
    against diffusers' below (the time matters: this is a fast test)."""
    out = tmp_path_factory.mktemp("inpainting-file-built") / "tiny-inpainting"
    command = ["build", str(inpainting_file), "--output", str(out), "--skip-validation"]
    result = CliRunner().invoke(main, command)
    assert result.exit_code == 0, result.output
    return out


def _json(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


def test_single_file_builds_an_inpainting_folder(file_folder: Path) -> None:
    manifest = _json(file_folder / "sdexport_manifest.json")
    assert (manifest["inpainting"], manifest["source"]["kind"]) == (True, "original")
    assert _json(file_folder / "model_index.json")["_class_name"] == "StableDiffusionInpaintPipeline"
    assert _json(file_folder / "unet" / "config.json")["in_channels"] == 9
    session = ort.InferenceSession(file_folder / "unet" / "model.onnx")
    inputs = {node.name: node.shape for node in session.get_inputs()}
    assert inputs["sample"][1] == 9


def test_single_file_unet_matches_diffusers_single_file_loader(
    file_folder: Path, inpainting_file: Path, inpainting_diffusers_dir: Path
) -> None:
    reference = StableDiffusionInpaintPipeline.from_single_file(
        inpainting_file, config=str(inpainting_diffusers_dir), local_files_only=True
    ).unet.eval()
    rng = np.random.default_rng(0)
    sample = rng.standard_normal((2, 9, 8, 8), dtype=np.float32)
    context = rng.standard_normal((2, 77, 32), dtype=np.float32)
    timestep = np.array(777.0, dtype=np.float32)
    session = ort.InferenceSession(file_folder / "unet" / "model.onnx")
    (out,) = session.run(None, {"sample": sample, "timestep": timestep, "encoder_hidden_states": context})
    with torch.no_grad():
        expected = reference(torch.from_numpy(sample), torch.from_numpy(timestep), torch.from_numpy(context))
    np.testing.assert_allclose(out, expected.sample.numpy(), atol=ATOL, rtol=1e-4)


def test_optimum_inpaint_pipeline_runs_our_folder_like_diffusers(
    inpainting_sdexport_dir: Path, inpainting_diffusers_dir: Path
) -> None:
    """optimum's ORTStableDiffusionInpaintPipeline opens our folder as it is and gives diffusers' picture
    from the same starting latents and the same generator (for the masked image's latent sample)."""
    onnx_pipeline = ORTStableDiffusionInpaintPipeline.from_pretrained(inpainting_sdexport_dir)
    scheduler = type(onnx_pipeline.scheduler).from_pretrained(inpainting_sdexport_dir / "scheduler")
    torch_pipeline = StableDiffusionInpaintPipeline.from_pretrained(
        inpainting_diffusers_dir, scheduler=scheduler
    )
    latents = torch.randn((1, 4, SIZE // 8, SIZE // 8), generator=torch.Generator().manual_seed(0))
    settings = {
        "prompt": PROMPT,
        "negative_prompt": NEGATIVE,
        "image": init_picture(SIZE),
        "mask_image": box_mask(SIZE),
        "num_inference_steps": 4,
        "guidance_scale": 7.5,
        "height": SIZE,
        "width": SIZE,
        "output_type": "np",
    }
    ours = onnx_pipeline(latents=latents.clone(), generator=torch.Generator().manual_seed(1), **settings)
    theirs = torch_pipeline(latents=latents.clone(), generator=torch.Generator().manual_seed(1), **settings)
    assert ours.images.shape == theirs.images.shape == (1, SIZE, SIZE, 3)
    assert np.abs(ours.images - theirs.images).max() < 1e-4
    assert ours.images.std() > 0.01, "a flat image would hide differences"


def sdrun_trajectory(folder: Path) -> list[np.ndarray]:
    """sdrun's latents after each step of one inpainting call on `folder`."""
    trajectory: list[np.ndarray] = []
    with Pipeline.load(folder, provider="cpu") as pipeline:
        assert pipeline.facts.inpainting
        pipeline.generate(
            PROMPT,
            NEGATIVE,
            steps=4,
            sampler="euler",
            seed=3,
            init_image=init_picture(SIZE),
            mask=box_mask(SIZE),
            callback=lambda step, total, latents: trajectory.append(latents.copy()),
        )
    return trajectory


def assert_same_trajectory(ours: list[np.ndarray], theirs: list[np.ndarray]) -> None:
    assert len(ours) == len(theirs) > 0
    for step, (mine, reference) in enumerate(zip(ours, theirs, strict=True)):
        error = np.linalg.norm(mine - reference) / np.linalg.norm(reference)
        assert error < OPTIMUM_LATENT_RTOL, f"latents after step {step}: relative error {error:.2e}"


def test_sdrun_runs_optimums_inpainting_export_like_ours(
    tmp_path_factory: pytest.TempPathFactory, inpainting_diffusers_dir: Path, inpainting_sdexport_dir: Path
) -> None:
    optimum_folder = tmp_path_factory.mktemp("inpainting-optimum") / "tiny-inpainting"
    optimum_export(inpainting_diffusers_dir, optimum_folder)
    with pytest.warns(UnverifiedFolderWarning):
        theirs = sdrun_trajectory(optimum_folder)
    assert_same_trajectory(sdrun_trajectory(inpainting_sdexport_dir), theirs)
