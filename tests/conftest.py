"""Fixtures shared across test folders: a tiny random-weight Stable Diffusion, as a diffusers folder and
as the ONNX folder that optimum-cli exports from it (the interop case: sdrun runs what optimum built), and
its inpainting variant (tests/inpaint_models.py) as a diffusers folder and as our build of it."""

import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from optimum_cli import optimum_export

TINY_MODEL_NAME = "tiny-random-sd"
PREBUILT_ONNX_DIR_VARIABLE = "SDRUN_TINY_ONNX_DIR"


def build_tiny_diffusers_pipeline(folder: Path) -> None:
    """A diffusers StableDiffusionPipeline with tiny random weights (SD 1.x shapes, 64x64 pixels), saved."""
    import torch
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    from sdexport.export.tokenizer_files import write_tokenizer

    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        sample_size=8,
        block_out_channels=(32, 64),
        layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=32,
        attention_head_dim=4,
        norm_num_groups=8,
    )
    vae = AutoencoderKL(
        block_out_channels=(8, 8, 16, 16),
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        latent_channels=4,
        layers_per_block=1,
        norm_num_groups=4,
    )
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=49408,
            hidden_size=32,
            intermediate_size=37,
            num_attention_heads=4,
            num_hidden_layers=2,
            max_position_embeddings=77,
            bos_token_id=49406,
            eos_token_id=49407,
        )
    )
    with tempfile.TemporaryDirectory() as tokenizer_dir:
        write_tokenizer(Path(tokenizer_dir))
        tokenizer = CLIPTokenizer.from_pretrained(tokenizer_dir)
    # SD 1.x's training schedule; clip_sample written out, since diffusers' DDIM defaults it to True.
    scheduler = DDIMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
    )
    pipeline = StableDiffusionPipeline(
        unet=unet,
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipeline.save_pretrained(folder)


@pytest.fixture(scope="session")
def tiny_diffusers_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
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
